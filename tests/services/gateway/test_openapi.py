"""The OpenAPI document: valid OpenAPI 3.1, and it describes every API route."""

from __future__ import annotations

import re

from openapi_spec_validator import validate
from starlette.routing import Route, WebSocketRoute

from darkroom.services.gateway.routes import api_routes
from tests.services.gateway.conftest import FrontFactory


async def test_the_served_document_is_valid_and_complete(make_front: FrontFactory) -> None:
    front = await make_front(generator=False)
    async with front.http(None) as http:
        document = (await http.get("/openapi.json")).json()
    validate(document)
    described = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    for route in api_routes():
        assert isinstance(route, Route | WebSocketRoute)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {index:int} -> {index}
        if isinstance(route, WebSocketRoute):
            assert (path, "GET") in described, path
            continue
        for method in route.methods or ():
            if method != "HEAD":
                assert (path, method) in described, (path, method)
