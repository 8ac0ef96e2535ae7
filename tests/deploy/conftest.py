"""Fixtures for the offline checks of deploy/: each overlay rendered once per session."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import KUBECTL, OVERLAYS, Obj, render


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    return {name: render(name, tmp_path_factory.mktemp(name)) for name in OVERLAYS}


@pytest.fixture(scope="session")
def objects(rendered: dict[str, list[Obj]], overlay: str) -> list[Obj]:
    return rendered[overlay]
