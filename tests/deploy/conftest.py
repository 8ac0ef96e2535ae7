"""Fixtures for the offline checks of deploy/: each overlay rendered once per session."""

from __future__ import annotations

import os

import pytest

from tests.deploy.manifests import KUBECTL, OVERLAYS, Obj, render


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    if KUBECTL is None:
        if os.environ.get("DARKROOM_REQUIRE_KUBECTL") == "1":  # CI: the overlays must render
            pytest.fail("kubectl is not installed, and DARKROOM_REQUIRE_KUBECTL=1")
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    return {name: render(name, tmp_path_factory.mktemp(name)) for name in OVERLAYS}


@pytest.fixture(scope="session")
def objects(rendered: dict[str, list[Obj]], overlay: str) -> list[Obj]:
    return rendered[overlay]
