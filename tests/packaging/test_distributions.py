"""darkroom-contract, darkroom-client and darkroom-server as wheels: what each one holds,
and that each installs and works on its own in a fresh virtual environment."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from tests.clients.conftest import StackFactory
from tests.packaging.conftest import Neutral, Venv, Wheel, Wheels, normalize, run

# Building, and installing into fresh venvs, runs in the fixtures of the first tests.
pytestmark = pytest.mark.timeout(360)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SERVER_SCRIPTS = {
    "darkroom-jobs": "darkroom.services.jobs.__main__:main",
    "darkroom-events": "darkroom.services.events.__main__:main",
    "darkroom-generator": "darkroom.services.generator.__main__:main",
    "darkroom-reconciler": "darkroom.services.reconciler.__main__:main",
    "darkroom-gateway": "darkroom.services.gateway.__main__:main",
    "darkroom-webhooks": "darkroom.services.webhooks.__main__:main",
    "darkroom-stack": "darkroom.services.stack.__main__:main",
    "darkroom-migrate": "darkroom.migrate:main",
}
# Server-side distributions that must never come with the client (more are derived from
# the server wheel's own requirements).
SERVER_ONLY = {
    "darkroom-server",
    "sqlalchemy",
    "arq",
    "psycopg",
    "psycopg-binary",
    "alembic",
    "redis",
    "google-cloud-storage",
    "uvloop",
    "pydantic",
    "pydantic-settings",
    "structlog",
    "torch",
    "diffusers",
    "transformers",
}
MAX_CLIENT_INSTALL_BYTES = 60 * 1024 * 1024
LICENSE_TEXT = (Path(__file__).resolve().parents[2] / "LICENSE").read_text()


def _files_under(root: Path, folder: str) -> set[str]:
    """The files of the copied checkout under `folder`, relative to it (links excluded)."""
    base = root / folder
    return {
        path.relative_to(base).as_posix()
        for path in base.rglob("*")
        if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts
    }


def _payload(wheel: Wheel) -> set[str]:
    """The wheel's files outside its dist-info."""
    return {name for name in wheel.names if not name.startswith(f"{wheel.dist_info}/")}


def _check_common(wheel: Wheel, distribution: str, version: str) -> None:
    assert wheel.path.name == f"{distribution.replace('-', '_')}-{version}-py3-none-any.whl"
    top_level = sorted({name.split("/", 1)[0] for name in wheel.names})
    assert all(name.startswith("darkroom") for name in top_level), (
        f"{wheel.path.name} installs top-level names outside darkroom*: {top_level}"
    )
    # `darkroom` is a namespace the three share: none of them may own darkroom/__init__.py.
    assert not wheel.has("darkroom/__init__.py"), f"{wheel.path.name} owns darkroom/__init__.py"
    metadata = wheel.metadata
    assert normalize(str(metadata["Name"])) == distribution
    assert metadata["License-Expression"] == "Apache-2.0", wheel.path.name
    assert wheel.read(f"{wheel.dist_info}/licenses/LICENSE") == LICENSE_TEXT, wheel.path.name
    assert wheel.entry_points("gui_scripts") == {}, wheel.path.name
    # RECORD lists every file of the wheel (but itself, without a hash) and nothing else.
    assert wheel.record() == set(wheel.names), wheel.path.name


def test_wheels_hold_only_their_own_darkroom_files(wheels: Wheels) -> None:
    version = wheels.contract.version
    for distribution, wheel in wheels.by_name.items():
        _check_common(wheel, distribution, version)

    # The contract: darkroom.v1 generated from every .proto, typed, and nothing else.
    protos = _files_under(wheels.checkout, "protos/darkroom/v1")
    stems = {Path(name).stem for name in protos if name.endswith(".proto")}
    assert stems, "no .proto files in the copied checkout"
    generated = {
        f"darkroom/v1/{stem}{suffix}"
        for stem in stems
        for suffix in (".proto", "_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
    }
    expected = generated | {"darkroom/v1/__init__.py", "darkroom/v1/py.typed"}
    assert _payload(wheels.contract) == expected
    assert wheels.contract.entry_points("console_scripts") == {}
    assert set(wheels.contract.requirements(extras=True)) == {
        "protobuf",
        "grpcio",
        "googleapis-common-protos",
    }

    # The client: darkroom_client as committed, the one `darkroom` script, three requirements.
    client_files = _files_under(wheels.checkout, "clients/python/darkroom_client")
    assert _payload(wheels.client) == {f"darkroom_client/{name}" for name in client_files}
    assert wheels.client.entry_points("console_scripts") == {"darkroom": "darkroom_client.cli:main"}
    client_requires = wheels.client.requirements(extras=True)
    assert set(client_requires) == {"darkroom-contract", "grpcio", "grpcio-status"}
    assert client_requires["darkroom-contract"] == f"darkroom-contract=={version}"

    # The server: the core and the services (through the darkroom/services link), no
    # darkroom.v1, no client, and every console script of the suite.
    server_files = {f"darkroom/{name}" for name in _files_under(wheels.checkout, "darkroom")}
    server_files |= {
        f"darkroom/services/{name}" for name in _files_under(wheels.checkout, "services")
    }
    assert _payload(wheels.server) == server_files
    assert "darkroom/services/jobs/servicer.py" in server_files  # the link was followed
    assert "darkroom/migrations/versions/0001_create_jobs.py" in server_files
    assert not any(name.startswith("darkroom/v1/") for name in wheels.server.names)
    assert wheels.server.entry_points("console_scripts") == SERVER_SCRIPTS
    server_requires = wheels.server.requirements()
    assert server_requires["darkroom-contract"] == f"darkroom-contract=={version}"
    assert "torch" not in server_requires  # only with the generator extra
    assert "torch" in wheels.server.requirements(extras=True)
    assert {"generator", "dev"} <= set(wheels.server.metadata.get_all("Provides-Extra") or [])


def _imports(venv: Venv, neutral: Neutral, *modules: str) -> dict[str, str]:
    """Import `modules` in `venv` from the neutral folder; the file each came from."""
    code = (
        "import importlib, json, sys\n"
        f"names = {list(modules)!r}\n"
        "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))\n"
    )
    out = run([venv.python, "-c", code], cwd=neutral.cwd, env=neutral.env(venv))
    files: dict[str, str] = json.loads(out)
    for module, file in files.items():
        assert Path(file).resolve().is_relative_to(venv.site_packages.resolve()), (
            f"{module} came from {file}, not from {venv.site_packages}"
        )
    return files


def _record_paths(venv: Venv, dist_info_glob: str) -> list[str]:
    found = sorted(venv.site_packages.glob(dist_info_glob))
    assert len(found) == 1, f"{dist_info_glob} in {venv.site_packages}: {found}"
    lines = (found[0] / "RECORD").read_text().splitlines()
    return [line.rsplit(",", 2)[0] for line in lines if line]


def test_the_client_installs_alone_small_and_clean(
    client_venv: Venv, wheels: Wheels, neutral: Neutral
) -> None:
    venv = client_venv
    venv.pip("check", cwd=neutral.cwd)

    server_only = SERVER_ONLY | (
        set(wheels.server.requirements())
        - set(wheels.client.requirements())
        - set(wheels.contract.requirements())
        - {"darkroom-contract"}
    )
    assert {"darkroom-client", "darkroom-contract"} <= set(venv.installed)
    came_along = sorted(server_only & set(venv.installed))
    assert not came_along, f"the client brought server dependencies: {came_along}"
    assert not (venv.site_packages / "darkroom" / "services").exists()
    assert not (venv.site_packages / "darkroom" / "config.py").exists()

    assert venv.added_bytes < MAX_CLIENT_INSTALL_BYTES, (
        f"installing the client added {venv.added_bytes / 2**20:.1f} MiB: "
        + ", ".join(sorted(venv.installed.values()))
    )

    # Ours install only darkroom* names, and the one script.
    for dist_info in ("darkroom_client-*.dist-info", "darkroom_contract-*.dist-info"):
        for recorded in _record_paths(venv, dist_info):
            if recorded.split("/", 1)[0].startswith("darkroom"):
                continue
            target = (venv.site_packages / recorded).resolve()
            assert target == (venv.bin / "darkroom").resolve(), (
                f"{dist_info} installed {recorded} (at {target})"
            )
    assert os.access(venv.bin / "darkroom", os.X_OK)

    _imports(venv, neutral, "darkroom_client", "darkroom.v1.jobs_service_pb2_grpc")


async def test_the_client_venv_runs_a_job_with_the_cli(
    make_stack: StackFactory, client_venv: Venv, neutral: Neutral, tmp_path: Path
) -> None:
    stack = await make_stack()
    output = tmp_path / "fox.png"
    # The servers run on this event loop: the CLI must run without blocking it.
    process = await asyncio.create_subprocess_exec(
        client_venv.bin / "darkroom",
        "generate",
        "a red fox",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "4",
        "-o",
        str(output),
        "--jobs",
        stack.jobs_target,
        "--events",
        stack.events_target,
        "--token",
        "alice-token",
        cwd=neutral.cwd,
        env=neutral.env(client_venv),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    shown = f"--- stdout\n{stdout.decode()}\n--- stderr\n{stderr.decode()}"
    assert process.returncode == 0, f"darkroom generate exited {process.returncode}\n{shown}"
    assert output.is_file(), f"no {output}\n{shown}"
    assert output.read_bytes().startswith(PNG_SIGNATURE), shown
    assert str(output) in stdout.decode().splitlines(), shown


def test_the_server_installs_without_the_generator_extra(
    server_venv: Venv, neutral: Neutral
) -> None:
    venv = server_venv
    venv.pip("check", cwd=neutral.cwd)
    assert {"darkroom-server", "darkroom-contract"} <= set(venv.installed)
    assert "darkroom-client" not in venv.installed
    extra_only = sorted({"torch", "diffusers", "transformers"} & set(venv.installed))
    assert not extra_only, f"installed without the generator extra: {extra_only}"

    files = _imports(
        venv,
        neutral,
        "darkroom.services.jobs.servicer",
        "darkroom.services.events.servicer",
        "darkroom.services.reconciler.reconciler",
        "darkroom.config",
        "darkroom.v1.jobs_service_pb2_grpc",
    )
    assert Path(files["darkroom.v1.jobs_service_pb2_grpc"]).parent.name == "v1"

    # The migrations came with the wheel, where darkroom.db looks for them.
    code = (
        "from alembic.script import ScriptDirectory\n"
        "from darkroom.db import alembic_config\n"
        "print(ScriptDirectory.from_config(alembic_config('postgresql://-/-')).get_current_head())"
    )
    head = run([venv.python, "-c", code], cwd=neutral.cwd, env=neutral.env(venv)).strip()
    assert head, "the installed server has no migration head"

    for script in SERVER_SCRIPTS:
        assert os.access(venv.bin / script, os.X_OK), f"{script} is not in {venv.bin}"
    assert not (venv.bin / "darkroom").exists()
