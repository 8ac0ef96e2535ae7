"""Wheels of the three distributions, built once per run from a clean copy of the checkout,
and fresh virtual environments with some of them installed.

The copy holds exactly what a clean clone holds (`git ls-files -co --exclude-standard`,
links kept as links), so no `build/` or `*.egg-info` leftover of a local install can leak
into a wheel. Each wheel is built with build isolation: its declared build requirements
are all it gets.
"""

from __future__ import annotations

import configparser
import email.parser
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import pytest

# The stack the CLI runs a job through: Jobs, Events and a Generator with a fast fake pipeline.
from tests.clients.conftest import make_stack  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
# The distribution of each project folder, in build order.
PROJECTS = {
    "darkroom-contract": "protos",
    "darkroom-client": "clients/python",
    "darkroom-server": ".",
}
PIP = ("-m", "pip", "--disable-pip-version-check")
# Seconds each step took, printed at the end of the run (pytest_terminal_summary).
TIMINGS: dict[str, float] = {}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def child_env() -> dict[str, str]:
    """This environment, less what would point a child Python at this checkout or venv."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PYTHON") and key != "VIRTUAL_ENV"
    }


def run(
    args: Sequence[str | Path],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> str:
    """Run `args`; its stdout. On failure, assert with everything it printed."""
    command = [str(arg) for arg in args]
    shown = shlex.join(command)
    try:
        result = subprocess.run(
            command,
            cwd=cwd,
            env=dict(child_env() if env is None else env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{shown} (in {cwd}) ran past {timeout} s\n"
            f"--- stdout\n{_text(exc.stdout)}\n--- stderr\n{_text(exc.stderr)}"
        ) from None
    assert result.returncode == 0, (
        f"{shown} (in {cwd}) exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def clean_copy(destination: Path) -> Path:
    """Copy the files a clean clone would hold into `destination`, links as links."""
    listed = run(
        ["git", "-C", REPO_ROOT, "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT
    )
    names = [name for name in listed.split("\0") if name]
    assert names, f"git lists no files in {REPO_ROOT}"
    for name in names:
        source = REPO_ROOT / name
        if not os.path.lexists(source):
            continue  # deleted in the working tree, still in the index
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return destination


@dataclass(frozen=True)
class Wheel:
    """One built wheel, read from its zip file."""

    path: Path
    names: tuple[str, ...]

    @classmethod
    def open(cls, path: Path) -> Wheel:
        with zipfile.ZipFile(path) as archive:
            return cls(path, tuple(archive.namelist()))

    @property
    def dist_info(self) -> str:
        found = {name.split("/", 1)[0] for name in self.names if ".dist-info/" in name}
        assert len(found) == 1, f"{self.path.name}: dist-info folders {sorted(found)}"
        return found.pop()

    def read(self, name: str) -> str:
        with zipfile.ZipFile(self.path) as archive:
            return archive.read(name).decode()

    def has(self, name: str) -> bool:
        return name in self.names

    @property
    def metadata(self) -> Message:
        return email.parser.Parser().parsestr(self.read(f"{self.dist_info}/METADATA"))

    @property
    def version(self) -> str:
        return str(self.metadata["Version"])

    def requirements(self, *, extras: bool = False) -> dict[str, str]:
        """Requires-Dist by normalized name (those of extras only when `extras`)."""
        found: dict[str, str] = {}
        for requirement in self.metadata.get_all("Requires-Dist") or []:
            if "extra ==" in requirement and not extras:
                continue
            match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
            assert match, f"{self.path.name}: unreadable Requires-Dist {requirement!r}"
            found[normalize(match.group())] = requirement
        return found

    def entry_points(self, group: str) -> dict[str, str]:
        name = f"{self.dist_info}/entry_points.txt"
        if not self.has(name):
            return {}
        parser = configparser.ConfigParser(delimiters=("=",))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(self.read(name))
        return dict(parser[group]) if parser.has_section(group) else {}

    def record(self) -> set[str]:
        lines = self.read(f"{self.dist_info}/RECORD").splitlines()
        return {line.rsplit(",", 2)[0] for line in lines if line}


@dataclass(frozen=True)
class Wheels:
    folder: Path
    checkout: Path
    by_name: dict[str, Wheel]

    @property
    def contract(self) -> Wheel:
        return self.by_name["darkroom-contract"]

    @property
    def client(self) -> Wheel:
        return self.by_name["darkroom-client"]

    @property
    def server(self) -> Wheel:
        return self.by_name["darkroom-server"]


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    """The three wheels, built with build isolation from a clean copy of the checkout."""
    started = time.monotonic()
    checkout = clean_copy(tmp_path_factory.mktemp("checkout"))
    TIMINGS["copy the checkout"] = time.monotonic() - started
    folder = tmp_path_factory.mktemp("wheels")
    by_name: dict[str, Wheel] = {}
    for distribution, project in PROJECTS.items():
        started = time.monotonic()
        run(
            [sys.executable, "-m", "build", "--wheel", "--outdir", folder, checkout / project],
            cwd=checkout,
        )
        TIMINGS[f"build {distribution}"] = time.monotonic() - started
        built = sorted(folder.glob(f"{distribution.replace('-', '_')}-*.whl"))
        assert len(built) == 1, f"building {project} left {[p.name for p in built]}"
        by_name[distribution] = Wheel.open(built[0])
    everything = sorted(path.name for path in folder.iterdir())
    assert len(everything) == len(PROJECTS), f"the wheel folder holds {everything}"
    return Wheels(folder, checkout, by_name)


@dataclass(frozen=True)
class Neutral:
    """A working directory outside the checkout and an environment with only PATH and HOME,
    so nothing of this checkout or of the test's own venv can be imported by accident."""

    cwd: Path
    home: Path

    def env(self, venv: Venv) -> dict[str, str]:
        return {"PATH": f"{venv.bin}{os.pathsep}{os.defpath}", "HOME": str(self.home)}


@pytest.fixture(scope="session")
def neutral(tmp_path_factory: pytest.TempPathFactory) -> Neutral:
    return Neutral(tmp_path_factory.mktemp("neutral-cwd"), tmp_path_factory.mktemp("home"))


def tree_size(folder: Path) -> int:
    """Bytes of every file under `folder` (links counted as links)."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            total += os.lstat(os.path.join(parent, name)).st_size
    return total


@dataclass
class Venv:
    """A fresh virtual environment (with pip), made by the venv module."""

    root: Path
    added_bytes: int = 0
    installed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, cwd: Path) -> Venv:
        run([sys.executable, "-m", "venv", root], cwd=cwd)
        return cls(root)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    @property
    def site_packages(self) -> Path:
        found = sorted(self.root.glob("lib/python*/site-packages"))
        assert len(found) == 1, f"site-packages of {self.root}: {found}"
        return found[0]

    def pip(self, *args: str | Path, cwd: Path) -> str:
        return run([self.python, *PIP, *args], cwd=cwd)

    def install(self, *wheels: Wheel, cwd: Path) -> None:
        """Install exactly these wheel files (and what they require, from the index);
        record the bytes added to site-packages and what is installed."""
        before = tree_size(self.site_packages)
        self.pip("install", "-q", *(wheel.path for wheel in wheels), cwd=cwd)
        self.added_bytes = tree_size(self.site_packages) - before
        listed = self.pip("list", "--format=freeze", cwd=cwd)
        self.installed = {
            normalize(line.split("==", 1)[0]): line for line in listed.splitlines() if line
        }


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory: pytest.TempPathFactory, wheels: Wheels, neutral: Neutral) -> Venv:
    """A fresh venv with only the client and the contract wheels installed."""
    started = time.monotonic()
    venv = Venv.create(tmp_path_factory.mktemp("client-venv") / "venv", neutral.cwd)
    venv.install(wheels.client, wheels.contract, cwd=neutral.cwd)
    TIMINGS["client venv: create + install"] = time.monotonic() - started
    return venv


@pytest.fixture(scope="session")
def server_venv(tmp_path_factory: pytest.TempPathFactory, wheels: Wheels, neutral: Neutral) -> Venv:
    """A fresh venv with the server and the contract wheels (no extras)."""
    started = time.monotonic()
    venv = Venv.create(tmp_path_factory.mktemp("server-venv") / "venv", neutral.cwd)
    venv.install(wheels.server, wheels.contract, cwd=neutral.cwd)
    TIMINGS["server venv: create + install"] = time.monotonic() - started
    return venv


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How long building and installing took, for whoever keeps `make test` short."""
    if TIMINGS:
        steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in TIMINGS.items())
        terminalreporter.write_line(f"packaging: {steps}")
