"""The HTTP gateway: REST/JSON, server-sent events, a WebSocket and the page, for browsers."""
