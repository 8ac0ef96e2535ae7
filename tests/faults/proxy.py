"""A TCP proxy that can blackhole: forward bytes both ways until told to stop, then keep
every socket open and go silent, as a network that drops packets does.

While blackholed it still accepts new connections (the kernel completes the handshake) but
answers nothing on them, and it stops reading from the sockets it holds, so what a client
sends stays unread in buffers, neither delivered nor refused. `restore` lets it all flow
again, in order, as a healed partition does: bytes sent into the hole (a statement a
client has given up on) may still reach the server afterwards, unless `sever` dropped
them first. `drop_replies` stops only the server's side: requests arrive and are carried
out, their answers never come back.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

CHUNK = 65_536


class BlackholeProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port`; in-process, asyncio."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._requests = asyncio.Event()  # set: client-to-server bytes flow
        self._replies = asyncio.Event()  # set: server-to-client bytes flow
        self.restore()
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def blackhole(self) -> None:
        """Stop forwarding in both directions; keep every socket open."""
        self._requests.clear()
        self._replies.clear()

    def drop_replies(self) -> None:
        """Forward requests to the server, but none of its answers."""
        self._replies.clear()

    def restore(self) -> None:
        """Forward again, both ways, starting with what waited in the buffers."""
        self._requests.set()
        self._replies.set()

    async def sever(self) -> None:
        """Close every connection it holds, dropping what waited in the buffers: the
        partition lasted until TCP gave up on them."""
        relays = list(self._relays)
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.sever()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The relay is a task of our own, so `close` may cancel it: asyncio's server
        # cannot take the cancellation of its own handler task (Python 3.11).
        relay = asyncio.create_task(self._relay(reader, writer))
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)
        await asyncio.wait([relay])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            # A new connection during a blackhole hears nothing, not even a refusal.
            await self._requests.wait()
            up_reader, upstream = await asyncio.open_connection(*self._target)
            await asyncio.gather(
                self._pump(reader, upstream, self._requests),
                self._pump(up_reader, writer, self._replies),
            )
        except OSError:
            pass
        finally:
            for stream in (writer, upstream):
                if stream is not None:
                    stream.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, flowing: asyncio.Event
    ) -> None:
        try:
            while True:
                await flowing.wait()
                data = await source.read(CHUNK)
                # Read just as the hole opened: held until it closes, never sent through it.
                await flowing.wait()
                if not data:
                    break
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            # One side ended: end the other, so each peer sees the close the other made.
            sink.close()
