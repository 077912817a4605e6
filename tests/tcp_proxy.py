"""A TCP proxy a test owns, to cut a server away from the node and bring it back.

    node's worker --> 127.0.0.1:<port> (this proxy) --> the real server

`cut()` closes the listening socket and every connection through it, as a server that went
down would; `restore()` listens on the same port again. The machine's server is never
touched: other tests share it.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support import free_port

CHUNK = 1 << 16


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []  # both ends of every connection, to cut
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.restore()

    def restore(self) -> None:
        """Listen (again) on the proxy's port and forward every connection to the target."""
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: same port
        self._listener = listener
        self._spawn(self._accept, listener)

    def cut(self) -> None:
        """Refuse new connections and break every open one, at once."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            listener.close()
        with self._lock:
            broken, self._sockets = self._sockets, []
        for end in broken:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)  # its pumps wake, then close it
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = [thread for thread in self._threads if thread.is_alive()]

    close = cut

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(_pump, client, upstream)
            self._spawn(_pump, upstream, client)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes one way until either end closes, then break and close both."""
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    for end in (source, sink):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
    source.close()  # the other pump closes the sink, once it has woken
