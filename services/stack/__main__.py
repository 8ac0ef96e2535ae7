"""`python -m darkroom.services.stack demo|up|down`: the whole stack on this machine.

demo: start Postgres and Redis if none runs, migrate, build the tiny model, start Jobs
(50051), Events (50052), the HTTP gateway and its page (8080), a Generator, the
reconciler and a webhook delivery worker, generate one image through the `darkroom` CLI
with its progress bar, print where the PNG is, and stop all it started.
up / down: start the same stack in the background, and stop it (state in .darkroom/); `up`
prints the page's address.

Two checkouts never share a stack silently: each uses its own database and Redis key
prefix (named after the checkout's path), and `up` refuses ports that are taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from darkroom.config import DEV_TOKEN
from darkroom.db import migrate
from darkroom.services.stack import servers

HOME = Path(os.environ.get("DARKROOM_STACK_HOME", ".darkroom")).resolve()
STATE = HOME / "stack.json"
JOBS_PORT = int(os.environ.get("DARKROOM_STACK_JOBS_PORT", "50051"))
EVENTS_PORT = int(os.environ.get("DARKROOM_STACK_EVENTS_PORT", "50052"))
GATEWAY_PORT = int(os.environ.get("DARKROOM_STACK_GATEWAY_PORT", "8080"))
PAGE = f"http://127.0.0.1:{GATEWAY_PORT}/"
# Named after the checkout, so that two checkouts on one machine keep their jobs apart.
CHECKOUT = hashlib.sha256(str(HOME).encode()).hexdigest()[:8]
DATABASE = os.environ.get("DARKROOM_STACK_DATABASE") or f"darkroom_local_{CHECKOUT}"
KEY_PREFIX = os.environ.get("DARKROOM_KEY_PREFIX") or f"darkroom-{CHECKOUT}"
PROCESSES = {
    "jobs": "darkroom.services.jobs",
    "events": "darkroom.services.events",
    "generator": "darkroom.services.generator",
    "reconciler": "darkroom.services.reconciler",
    "gateway": "darkroom.services.gateway",
    "webhooks": "darkroom.services.webhooks",
}


def _say(message: str) -> None:
    print(f"darkroom: {message}", file=sys.stderr, flush=True)


def _session_secret() -> str:
    """This checkout's own key for the gateway's session cookies, made once: a page stays
    signed in across `make down` / `make up`."""
    path = HOME / "gateway-session-secret"
    if not path.exists():
        HOME.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _wait_page(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{PAGE}healthz", timeout=1):  # noqa: S310 - our own http URL
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _environment(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DARKROOM_DATABASE_URL": database_url,
        "DARKROOM_REDIS_URL": redis_url,
        "DARKROOM_KEY_PREFIX": KEY_PREFIX,
        "DARKROOM_JOBS_ADDRESS": f"127.0.0.1:{JOBS_PORT}",
        "DARKROOM_EVENTS_ADDRESS": f"127.0.0.1:{EVENTS_PORT}",
        "DARKROOM_GATEWAY_ADDRESS": f"127.0.0.1:{GATEWAY_PORT}",
        "DARKROOM_GATEWAY_SESSION_SECRET": os.environ.get(
            "DARKROOM_GATEWAY_SESSION_SECRET", _session_secret()
        ),
        "DARKROOM_STORAGE_URL": os.environ.get("DARKROOM_STORAGE_URL", str(HOME / "storage")),
        "DARKROOM_GENERATOR_MODEL_PATH": os.environ.get(
            "DARKROOM_GENERATOR_MODEL_PATH", str(HOME / "models" / "tiny-sd")
        ),
        "DARKROOM_LOG_JSON": "true",
    }


def _wait_serving(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        # SO_REUSEADDR: a port left in TIME_WAIT is free; one that something listens on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def start() -> dict[str, object]:
    """Start everything that is not running yet; return what we started."""
    if STATE.exists():
        raise SystemExit(f"a stack is already up ({STATE}); run `make down` first")
    for name, port in (("Jobs", JOBS_PORT), ("Events", EVENTS_PORT), ("the gateway", GATEWAY_PORT)):
        if _port_taken(port):
            raise SystemExit(
                f"darkroom: port {port} (for {name}) is taken, perhaps by the stack of another "
                "checkout: run `make down` there, or choose free ports with "
                "DARKROOM_STACK_JOBS_PORT, DARKROOM_STACK_EVENTS_PORT and "
                "DARKROOM_STACK_GATEWAY_PORT"
            )
    HOME.mkdir(parents=True, exist_ok=True)
    admin_url, own_postgres = servers.postgres(HOME)
    redis_url, own_redis = servers.redis(HOME)
    _say(
        f"Postgres {'started' if own_postgres else 'found'}, "
        f"Redis {'started' if own_redis else 'found'}"
    )
    database_url = servers.database(admin_url, DATABASE)
    migrate(database_url)
    model = HOME / "models" / "tiny-sd"
    if (
        "DARKROOM_GENERATOR_MODEL_PATH" not in os.environ
        and not (model / "model_index.json").exists()
    ):
        _say("building the tiny model")
        # Before transformers is imported: its torchvision notice is not ours to show.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from darkroom.services.generator.tiny_model import build  # noqa: PLC0415 - imports torch

        build(model)
    env = _environment(database_url, redis_url)
    logs = HOME / "logs"
    logs.mkdir(exist_ok=True)
    pids = {}
    for name, module in PROCESSES.items():
        with (logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(  # noqa: S603 - our own modules
                [sys.executable, "-m", module],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        pids[name] = process.pid
    state: dict[str, object] = {
        "pids": pids,
        "own_postgres": own_postgres,
        "own_redis": own_redis,
        "database_url": database_url,
        "redis_url": redis_url,
    }
    STATE.write_text(json.dumps(state, indent=2))
    _wait_serving(JOBS_PORT)
    _wait_serving(EVENTS_PORT)
    _wait_page()
    _say(f"Jobs on localhost:{JOBS_PORT}, Events on localhost:{EVENTS_PORT}, token {DEV_TOKEN}")
    _say(f"the page: open {PAGE} and sign in with the token {DEV_TOKEN}")
    _say(f"database {DATABASE}, Redis key prefix {KEY_PREFIX} (this checkout's own)")
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state says it is gone.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def stop() -> None:
    """Stop everything `start` started."""
    if not STATE.exists():
        _say("no stack is up")
        return
    state = json.loads(STATE.read_text())
    pids = [int(pid) for pid in state["pids"].values()]
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    if state["own_redis"]:
        servers.stop_redis(HOME)
    if state["own_postgres"]:
        servers.stop_postgres(HOME)
    STATE.unlink()
    _say("stack stopped")


def demo() -> int:
    start()
    try:
        output = HOME / "demo.png"
        env = {
            **os.environ,
            "DARKROOM_JOBS_TARGET": f"localhost:{JOBS_PORT}",
            "DARKROOM_EVENTS_TARGET": f"localhost:{EVENTS_PORT}",
            "DARKROOM_TOKEN": DEV_TOKEN,
        }
        result = subprocess.run(  # noqa: S603 - our own CLI
            [
                sys.executable,
                "-m",
                "darkroom_client.cli",
                "generate",
                "a lighthouse at dusk, oil on canvas",
                "--width",
                "256",
                "--height",
                "256",
                "--steps",
                "20",
                "--seed",
                "7",
                "-o",
                str(output),
            ],
            env=env,
            check=False,
        )
        if result.returncode == 0:
            _say(f"your image is at {output}")
            _say(f"`make up` keeps the stack running: then open {PAGE} to do the same in a browser")
        return result.returncode
    finally:
        stop()


def main() -> None:
    command = sys.argv[1] if len(sys.argv) == 2 else ""
    if command == "demo":
        raise SystemExit(demo())
    if command == "up":
        start()
        _say("stack is up; `make down` stops it")
    elif command == "down":
        stop()
    else:
        print("usage: python -m darkroom.services.stack demo|up|down", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
