"""A TCP proxy that delays every byte by a fixed time each way, as a network between hosts would.

All its connections share one event loop on one thread: what a connection
reads is stamped and passed on once its time has come, so bytes keep their
order and the delay does not add up across packets.  A thread per
direction of each connection (as an earlier version had) made the proxy
itself the bottleneck of a benchmark: hundreds of threads taking turns
at one interpreter lock.

Run as a program it serves until killed, in a process of its own (the
fleet bench gives each instance one), after printing its port:

    python tests/netdelay.py HOST PORT DELAY_MS
"""

import asyncio
import collections
import sys
import threading

_EOF, _CLOSE = object(), object()


class _Direction(asyncio.Protocol):
    """One side's socket: what it reads goes to ``peer``'s socket ``delay`` seconds later."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.transport = None
        self.peer = None
        self._due = collections.deque()  # (when, bytes, or _EOF, or _CLOSE)
        self._timer = None
        self.passed_eof = False  # the end of what this socket read is passed on

    def connection_made(self, transport):
        self.transport = transport  # asyncio sets TCP_NODELAY on it
        self.proxy._transports.add(transport)

    def data_received(self, data):
        self._stamp(data)

    def eof_received(self):
        self._stamp(_EOF)
        return True  # half closed: the other way still carries bytes

    def connection_lost(self, exc):
        self.proxy._transports.discard(self.transport)
        self._stamp(_CLOSE)

    def _stamp(self, data):
        loop = self.proxy.loop
        self._due.append((loop.time() + self.proxy.delay, data))
        if self._timer is None:
            self._timer = loop.call_at(self._due[0][0], self._pass_on)

    def _pass_on(self):
        """Hand the peer everything that is due; come back when the next is."""
        self._timer = None
        if self.peer is None:
            return  # the upstream is not connected yet: _open_upstream calls again
        now = self.proxy.loop.time()
        sink = self.peer.transport
        while self._due and self._due[0][0] <= now:
            _, data = self._due.popleft()
            if sink.is_closing():
                self._due.clear()
                return
            if data is _CLOSE:
                self._close_both()
            elif data is _EOF:
                sink.write_eof()
                self.passed_eof = True
                if self.peer.passed_eof:  # the end has now been passed both ways
                    self._close_both()
            else:
                sink.write(data)
        if self._due:
            self._timer = self.proxy.loop.call_at(self._due[0][0], self._pass_on)

    def _close_both(self):
        self.peer.transport.close()
        self.transport.close()


def through(database_url, upstream, port):
    """Return ``database_url``, which names ``upstream``, pointed at a proxy on ``port``."""
    host, upstream_port = upstream
    return database_url.replace(f"{host}:{upstream_port}", f"127.0.0.1:{port}", 1)


class DelayProxy:
    """Forward 127.0.0.1:<port> to ``upstream`` (``host``, ``port``), ``delay`` seconds each way."""

    def __init__(self, upstream, delay):
        self.upstream, self.delay = upstream, delay
        self._transports = set()
        self.loop = asyncio.new_event_loop()
        self._server = self.loop.run_until_complete(
            self.loop.create_server(lambda: _Client(self), "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def url_for(self, database_url):
        """Return ``database_url`` (postgresql://…) pointed at this proxy."""
        return through(database_url, self.upstream, self.port)

    def close(self):
        """Stop listening and cut every connection."""
        if self.loop.is_closed():
            return

        def stop():
            self._server.close()
            for transport in list(self._transports):
                transport.abort()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self._thread.join(5)
        self.loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _Client(_Direction):
    """A client's side: on connecting, it opens its upstream side."""

    def connection_made(self, transport):
        super().connection_made(transport)
        self.proxy.loop.create_task(self._open_upstream())

    async def _open_upstream(self):
        host, port = self.proxy.upstream
        try:
            _, upstream = await self.proxy.loop.create_connection(
                lambda: _Direction(self.proxy), host, port
            )
        except OSError:
            self.transport.abort()
            return
        upstream.peer, self.peer = self, upstream
        for side in (self, upstream):
            if side._due and side._timer is None:
                side._pass_on()  # what arrived while connecting


def main(host, port, delay_ms):
    proxy = DelayProxy((host, int(port)), float(delay_ms) / 1000)
    print(proxy.port, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
