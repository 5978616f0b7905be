"""A small HTTP proxy for fault tests: it forwards requests to a real server, and can
drop an answer (the request reached the server, its response never reaches the
client) or answer in the server's place; faults apply in the order they were given.

One request per client connection: the request goes upstream with
``Connection: close`` and the whole answer is read before it is passed on.
"""

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Seen:
    """A request the proxy received: when, its method, path and headers (lower-case names)."""

    at: float
    method: str
    path: str
    headers: dict = field(default_factory=dict)


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``upstream`` (``host``, ``port``), with faults."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.seen = []
        # In the order given: [method, path prefix, response bytes or None to drop, times left]
        self._faults = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def drop_answer(self, method, path_prefix, times=1):
        """Forward the next ``times`` matching requests but close the connection unanswered."""
        with self._lock:
            self._faults.append([method, path_prefix, None, times])

    def answer(self, method, path_prefix, status, body=b"", headers=(), times=1):
        """Answer the next ``times`` matching requests with ``status`` instead of the server."""
        head = [f"HTTP/1.1 {status} Fault", f"Content-Length: {len(body)}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in headers]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        with self._lock:
            self._faults.append([method, path_prefix, raw, times])

    def requests_to(self, method, path_prefix):
        """Return what was seen of the requests matching ``method`` and ``path_prefix``."""
        return [s for s in self.seen if s.method == method and s.path.startswith(path_prefix)]

    def close(self):
        self._listener.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- inside ---------------------------------------------------------------

    def _accept(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _fault(self, method, path):
        """Return the first fault left for this request (and use it up), or None."""
        with self._lock:
            for fault in self._faults:
                if fault[0] == method and path.startswith(fault[1]) and fault[3] > 0:
                    fault[3] -= 1
                    return fault
        return None

    def _serve(self, conn):
        with conn:
            request = _read_request(conn)
            if request is None:
                return
            method, path, headers, raw = request
            self.seen.append(Seen(time.monotonic(), method, path, headers))
            fault = self._fault(method, path)
            if fault and fault[2] is not None:
                conn.sendall(fault[2])  # made up here: the server never sees it
                return
            answer = self._forward(raw)
            if fault:
                return  # the server handled it; the client hears nothing
            conn.sendall(answer)

    def _forward(self, raw):
        with socket.create_connection(self.upstream) as upstream:
            upstream.sendall(raw)
            chunks = []
            while chunk := upstream.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def _read_request(conn):
    """Read one request; return (method, path, headers, bytes to send upstream) or None."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    kept = [line for line in lines[1:] if not line.lower().startswith("connection:")]
    upstream_head = "\r\n".join([lines[0], *kept, "Connection: close"])
    return method, path, headers, upstream_head.encode("latin-1") + b"\r\n\r\n" + body


class FreezingTcpProxy:
    """Forward a free loopback port to ``upstream`` (host, port); ``freeze()`` stops the bytes.

    Frozen, the proxy keeps every socket open and accepts new connections
    (and connects them upstream) but forwards nothing either way, as a
    server that hangs with its TCP connections up; ``thaw()`` forwards again,
    what waited included.
    """

    def __init__(self, upstream):
        self.upstream = upstream
        self._flowing = threading.Event()
        self._flowing.set()
        self._closing = threading.Event()
        self._sockets, self._lock = [], threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self):
        self._flowing.clear()

    def thaw(self):
        self._flowing.set()

    def close(self):
        self._closing.set()
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self):
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source, sink):
        try:
            while True:
                # Frozen: read nothing, so what is sent waits in the kernel's buffers.
                self._flowing.wait()
                data = source.recv(65536)
                if not data or self._closing.is_set():
                    break
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
