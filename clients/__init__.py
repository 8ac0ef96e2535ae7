"""Darkroom clients: the Python client library and the `darkroom` CLI."""
