"""A TCP proxy that delays every byte by a fixed time each way, as a network between hosts would.

Each direction of each connection has a reader, which stamps what it reads,
and a writer, which passes it on once its time has come: bytes keep their
order and the delay does not add up across packets.
"""

import queue
import socket
import threading
import time


class DelayProxy:
    """Forward 127.0.0.1:<port> to ``upstream`` (``host``, ``port``), ``delay`` seconds each way."""

    def __init__(self, upstream, delay):
        self.upstream, self.delay = upstream, delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, database_url):
        """Return ``database_url`` (postgresql://…) pointed at this proxy."""
        host, port = self.upstream
        return database_url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}", 1)

    def close(self):
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            self._pipe(client, server)
            self._pipe(server, client)

    def _pipe(self, source, sink):
        due = queue.SimpleQueue()

        def read():
            while True:
                try:
                    data = source.recv(65536)
                except OSError:
                    data = b""
                due.put((time.monotonic() + self.delay, data))
                if not data:
                    return

        def write():
            while True:
                at, data = due.get()
                pause = at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                try:
                    if not data:
                        sink.shutdown(socket.SHUT_WR)
                        return
                    sink.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()
