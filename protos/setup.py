"""Build hook of darkroom-contract: generate darkroom.v1 from the .proto files.

`build_py` runs protoc (grpcio-tools) over `darkroom/v1/*.proto` into the build folder:
messages (`*_pb2.py`), gRPC stubs (`*_pb2_grpc.py`) and their typing stubs (mypy-protobuf's
`*.pyi`), plus `__init__.py` and `py.typed`. `pip wheel protos/` or `python -m build protos/`
is the one way to get the Python stubs; nothing generated is committed.
"""

from __future__ import annotations

import importlib.util
import shutil
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PACKAGE = Path("darkroom", "v1")


def _include_of(module: str) -> Path:
    """The folder that holds `module`'s .proto files as import paths (`google/...`)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"cannot find {module}, needed to compile the contract")
    return Path(next(iter(spec.submodule_search_locations))).parents[module.count(".")]


def _plugin(name: str) -> str:
    """A protoc plugin installed beside this build's Python (the isolated build env)."""
    found = Path(sysconfig.get_path("scripts"), name)
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install mypy-protobuf into the build env")
    return path


def generate(out: Path) -> list[Path]:
    """Write the generated darkroom.v1 package under `out`; return the files written."""
    from grpc_tools import protoc  # noqa: PLC0415 - only the build env has it

    protos = sorted(str(p.relative_to(HERE)) for p in (HERE / PACKAGE).glob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {HERE / PACKAGE}")
    package = out / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{HERE}",
        f"-I{_include_of('grpc_tools')}/grpc_tools/_proto",
        f"-I{_include_of('google.rpc')}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(protos))
    (package / "__init__.py").write_text('"""Darkroom\'s contract, generated from protos/."""\n')
    (package / "py.typed").write_text("")
    return sorted(package.iterdir())


class BuildContract(build_py):
    """`build_py` that generates the stubs first (the .proto files ride along as data)."""

    def run(self) -> None:
        generate(Path(self.build_lib))
        super().run()


setup(cmdclass={"build_py": BuildContract})
