"""The front node's side of the broker: one DEALER socket to the worker, requests in flight.

    submit() -> backlog -> [window of WINDOW in flight, keyed by request id] -> worker
    process() <- replies matched by request id (order is restored by the caller)

Like the ZeroMQ guide's Lazy Pirate client, it never trusts a socket after trouble: when the
worker disconnects (the monitor says so at once, also when the worker is killed), the socket
is closed with linger 0, a fresh one is opened, a worker is spawned if none is listening,
and every request in flight is sent again. Resending is safe because request ids are
unique across nodes and restarts and the worker answers a known id from its stored reply.

The window matters: a ROUTER drops replies silently once a peer's queue is full, so no more
than WINDOW requests are ever outstanding, well under the high-water mark.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from broker import codec, endpoint
from broker.spawn import EXIT_CONFIG, EXIT_OWNED, log_since, log_size, spawn_worker

log = logging.getLogger(__name__)

WINDOW = 256  # requests in flight at once; ZeroMQ's default high-water mark is 1000
TICK_MS = 100  # how often liveness is checked while requests wait
RECONNECT_MS = 10  # a restarted worker is reached this soon after it binds
FIRST_BACKOFF_S = 0.1  # a worker that fails at start-up is restarted after growing pauses
MAX_BACKOFF_S = 5.0


class WorkerConfigError(Exception):
    """The worker refuses to start with this configuration; restarting would not help."""


@dataclass
class Outstanding:
    token: Any  # the caller's handle for the reply
    request_id: bytes
    kind: str
    frame: bytes


class WorkerClient:
    def __init__(self, where: endpoint.Endpoint, migrations: Path, window: int = WINDOW) -> None:
        self.where = where
        self.migrations = migrations
        self.window = window
        self.context = zmq.Context()
        self.poller = zmq.Poller()  # the caller may register its own descriptors too
        self.in_flight: dict[bytes, Outstanding] = {}  # insertion order is sending order
        self.backlog: deque[Outstanding] = deque()
        self.connected = False
        self._spawned = 0
        self._first_spawns = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._failures = 0  # consecutive workers that died before answering anything
        self._next_spawn = 0.0
        self._log_offset = 0  # where the worker log ended when we last spawned
        self._node_id = os.urandom(8)
        self._sequence = itertools.count()
        self._socket, self._monitor = self._open()
        self._ensure_worker()
        self._first_spawns = self._spawned  # spawns from here on are restarts

    # -- what the front node calls ---------------------------------------------------------

    def submit(self, token: Any, kind: str) -> None:
        """Queue a request of type `kind`; its reply comes back from process() with `token`."""
        request_id = self._node_id + next(self._sequence).to_bytes(8, "big")
        frame = codec.pack({"id": request_id, "type": kind})
        self.backlog.append(Outstanding(token, request_id, kind, frame))
        self._fill_window()

    @property
    def restarts(self) -> int:
        """Workers this node has started to replace one that went away."""
        return self._spawned - self._first_spawns

    def busy(self) -> bool:
        return bool(self.in_flight or self.backlog)

    def has_room(self) -> bool:
        """False while requests wait for the window: the caller should stop reading input."""
        return not self.backlog

    def process(self, events: dict[Any, int]) -> list[tuple[Any, dict[str, Any]]]:
        """Handle what poll() reported; return (token, reply body) pairs now complete.

        Raises WorkerConfigError when the worker cannot start at all.
        """
        if self._monitor in events:
            self._watch_connection()
        replies = self._receive() if self._socket in events else []
        if self.busy() and not self.connected:
            self._ensure_worker()
        return replies

    def close(self) -> None:
        self.poller.unregister(self._socket)
        self.poller.unregister(self._monitor)
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self.context.term()

    # -- sockets ---------------------------------------------------------------------------

    def _open(self) -> tuple[zmq.Socket, zmq.Socket]:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.where.address)
        self.poller.register(sock, zmq.POLLIN)
        self.poller.register(monitor, zmq.POLLIN)
        return sock, monitor

    def _reopen(self) -> None:
        """Replace the socket and resend every request in flight, in order."""
        self.poller.unregister(self._socket)
        self.poller.unregister(self._monitor)
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._socket, self._monitor = self._open()
        self.connected = False
        for outstanding in self.in_flight.values():
            self._socket.send(outstanding.frame)
        if self.in_flight:
            log.info("resent %d requests in flight", len(self.in_flight))

    def _watch_connection(self) -> None:
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_CONNECTED:
                self.connected = True
            elif event == zmq.EVENT_DISCONNECTED:
                log.warning("worker for %s disconnected", self.where.database)
                self._reopen()
                self._ensure_worker()
                return  # the old monitor is closed

    def _receive(self) -> list[tuple[Any, dict[str, Any]]]:
        replies = []
        while True:
            try:
                frame = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                message = codec.unpack(frame)
            except codec.CodecError as exc:
                log.error("dropping an unreadable reply from the worker: %s", exc)
                continue
            outstanding = self.in_flight.pop(message.get("id"), None)
            if outstanding is None:
                continue  # a duplicate answer to a request that was resent
            body = message.get("body")
            if not isinstance(body, dict):
                log.error("dropping a reply without a body for %s", outstanding.request_id.hex())
                self.in_flight[outstanding.request_id] = outstanding
                continue
            if outstanding.kind == "health" and body.get("type") == "health_ok":
                body["worker_restarts"] = self.restarts
            self._failures = 0
            replies.append((outstanding.token, body))
        self._fill_window()
        return replies

    def _fill_window(self) -> None:
        while self.backlog and len(self.in_flight) < self.window:
            outstanding = self.backlog.popleft()
            self.in_flight[outstanding.request_id] = outstanding
            self._socket.send(outstanding.frame)

    # -- the worker process ----------------------------------------------------------------

    def _ensure_worker(self) -> None:
        """Spawn a worker unless one is listening, starting, or backing off after failures.

        Raises WorkerConfigError if our worker exited because it cannot start at all.
        """
        if self._child is not None:
            code = self._child.poll()
            if code is None:
                return  # still starting (or serving, and the connection will come)
            self._child = None
            if code == EXIT_CONFIG:
                reason = log_since(self.where, self._log_offset)
                raise WorkerConfigError(reason or f"it exited with status {code}")
            if code != EXIT_OWNED:
                self._failures += 1
                pause = min(FIRST_BACKOFF_S * 2 ** (self._failures - 1), MAX_BACKOFF_S)
                self._next_spawn = time.monotonic() + pause
                log.warning("worker exited with status %s; next start in %.1f s", code, pause)
        if endpoint.is_listening(self.where.address) or time.monotonic() < self._next_spawn:
            return
        self._log_offset = log_size(self.where)
        self._child = spawn_worker(self.where, self.migrations)
        self._spawned += 1
        log.info("started worker pid %d for %s", self._child.pid, self.where.database)
