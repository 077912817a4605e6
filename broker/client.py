"""The front node's side of the broker: one DEALER socket to the worker, requests in flight.

    submit() -> backlog -> [window of WINDOW in flight, keyed by request id] -> worker
    cancel_writes() ------------------------^ at once, ahead of the backlog
    process() <- replies matched by request id (order is restored by the caller)

A request's reply is its last body from the worker; progress bodies before it (BEFORE_REPLY)
are handed on as they come and leave the request in flight.

Like the ZeroMQ guide's Lazy Pirate client, it never trusts a socket after trouble: when the
worker disconnects (the monitor says so at once, also when the worker is killed), the socket
is closed with linger 0, a fresh one is opened, a worker is spawned if none is listening,
and every request in flight is sent again. Resending is safe because request ids are
unique across nodes and restarts and the worker answers a known id from its stored reply.

The window matters: a ROUTER drops replies silently once a peer's queue is full, so no more
than WINDOW requests are ever outstanding, well under the high-water mark, and a cancel
beside them (one at most: it names the one write in flight, and a write waits for it).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import zmq

from broker import codec
from broker.errors import CRASH, ReplyError, cancelled_before_start
from broker.kinds import READS, WRITES, before_reply
from broker.monitor import pending_events
from broker.runs import RunUnpacker
from broker.spawn import WorkerSupervisor

if TYPE_CHECKING:
    from broker.keys import CurveKeys

log = logging.getLogger(__name__)

WINDOW = 256  # requests in flight at once; ZeroMQ's default high-water mark is 1000
MESSAGE_REQUESTS = codec.MAX_MESSAGE_REQUESTS  # per message: the worker serves a message a turn
TICK_MS = 100  # how often liveness is checked while requests wait on a connected worker
WAITING_TICK_MS = 20  # ... and while no worker is connected
RECONNECT_MS = 2  # a restarted worker is reached this soon after it binds
HEARTBEAT_MS = 1000  # TCP only: a silent worker is declared gone after three of these
GIVE_UP_S = 10.0  # workers dying this long without answering: pending requests get error 13
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class Outstanding(NamedTuple):
    token: Any  # the caller's handle for the reply
    request_id: bytes
    kind: str
    frame: bytes
    names: tuple[bytes, ...] = ()  # a cancel's: the ids of the writes it asks the worker to stop
    cancelled_here: int = 0  # a cancel's: writes it answered itself, never sent


class WorkerRefused(Exception):
    """The worker rejected this node's key: retrying with the same key cannot help."""


class WorkerClient:
    def __init__(
        self,
        address: str,
        supervisor: WorkerSupervisor | None,
        curve: CurveKeys | None = None,
        window: int = WINDOW,
        target: str | None = None,
    ) -> None:
        """Talk to the worker at `address`; `supervisor` (local workers only) starts it.
        Each request names `target` (Endpoint.target), the database it is meant for."""
        self.address = address
        self.target = target
        self.curve = curve
        self.window = window
        self.context = zmq.Context()
        self.poller = zmq.Poller()  # the caller may register its own descriptors too
        self.in_flight: dict[bytes, Outstanding] = {}  # insertion order is sending order
        # Ids of requests in flight that a worker may have received: sent, or still queued,
        # while a connection stood. Only the others can be answered "not run" when giving up.
        self._delivered: set[bytes] = set()
        self.backlog: deque[Outstanding] = deque()
        self._writing: bytes | None = None  # the id of the write in flight: one at a time
        self.connected = False
        self.supervisor = supervisor
        self._unreachable_since: float | None = None  # busy with no worker connected since
        self._last_frame: bytes | None = None  # the last reply body frame, and its body
        self._last_body: dict[str, Any] = {}
        self._bodies = RunUnpacker()  # a status changed in a few entries unpacks only those
        self._sentinel: int | None = None  # the supervisor's pidfd, as registered here
        self._node_id = os.urandom(8)
        self._sequence = itertools.count()
        self._socket, self._monitor = self._open()
        self._ensure_worker()  # at once: the worker starts while the first request is read
        self._first_spawns = self._spawned()  # spawns from here on are restarts

    # -- what the front node calls ---------------------------------------------------------

    def submit(
        self, token: Any, kind: str, params: dict[str, Any] | None = None, src: str | None = None
    ) -> None:
        """Queue a request of type `kind` with its fields; its reply comes back from
        process() with `token`. Nothing is sent until flush(), so that requests read
        together travel together.

        Raises CodecError, naming the field, for a value that cannot travel.
        """
        request_id = self._new_id()
        frame = codec.pack_request(request_id, kind, params, src, self.target)
        if not self.busy() and self.supervisor is not None:
            # Failures seen while nothing waited do not shorten this request's wait.
            self.supervisor.restart_clock()
        self.backlog.append(Outstanding(token, request_id, kind, frame))

    def cancel_writes(self, token: Any, src: str | None = None) -> list[tuple[Any, dict]]:
        """Cancel this node's writes: answer at once each one never sent, and have the
        worker stop the ones it was sent (those a cancel in flight names already excepted).

        Returns the (token, reply body) pairs complete now: every write taken from the
        backlog, answered `cancelled_before_start`, then, when no write is in flight, the
        cancel's own {"type": "cancel_ok", "cancelled": K}. Otherwise a cancel request naming
        them goes to the worker at once, ahead of the backlog, and stays in flight (resent
        like any other); its cancel_ok comes from process() with the writes answered here
        added to the worker's count.
        """
        replies, kept = [], deque()
        for outstanding in self.backlog:
            if outstanding.kind in WRITES:
                replies.append((outstanding.token, cancelled_before_start().body()))
            else:
                kept.append(outstanding)
        self.backlog = kept
        # A write already named needs no second cancel; the first one counts it.
        named = {name for request in self.in_flight.values() for name in request.names}
        running = [
            request_id
            for request_id, outstanding in self.in_flight.items()
            if outstanding.kind in WRITES and request_id not in named
        ]
        if not running:
            return [*replies, (token, {"type": "cancel_ok", "cancelled": len(replies)})]
        request_id = self._new_id()
        frame = codec.pack_request(request_id, "cancel", {"ids": running}, src, self.target)
        cancel = Outstanding(token, request_id, "cancel", frame, tuple(running), len(replies))
        self._put_in_flight(cancel)
        self._send([cancel])
        log.info("cancelling %d writes sent and %d not sent", len(running), len(replies))
        return replies

    def has_writes(self) -> bool:
        """True while a write of this node waits to be sent or to be answered."""
        waiting = itertools.chain(self.backlog, self.in_flight.values())
        return any(outstanding.kind in WRITES for outstanding in waiting)

    def _new_id(self) -> bytes:
        """A request id unique across nodes and restarts: this client's, then a counter."""
        return self._node_id + next(self._sequence).to_bytes(8, "big")

    def flush(self) -> None:
        """Send what waits, as far as the window allows."""
        self._fill_window()
        if self.busy() and not self.connected:
            self._ensure_worker()

    @property
    def restarts(self) -> int:
        """Workers this node has started to replace one that went away."""
        return self._spawned() - self._first_spawns

    def _spawned(self) -> int:
        return self.supervisor.spawned if self.supervisor else 0

    def busy(self) -> bool:
        return bool(self.in_flight or self.backlog)

    def watch(self, fd: int, readable: bool) -> None:
        """Have poller.poll() also report when `fd` is readable (or stop reporting it)."""
        if readable:
            self.poller.register(fd, zmq.POLLIN)
        else:
            self.poller.unregister(fd)

    def timeout_ms(self) -> int:
        """How long the caller may poll before process() must look at the worker again."""
        return WAITING_TICK_MS if self.busy() and not self.connected else TICK_MS

    def has_room(self) -> bool:
        """False while a window's worth of requests waits: the caller should stop reading
        input, so that it backs up, not memory. Below that, input is read while requests
        wait behind a write, so that a `cancel` behind them is read and overtakes them."""
        return len(self.backlog) < self.window

    def process(self, events: dict[Any, int]) -> list[tuple[Any, dict[str, Any]]]:
        """Handle what poll() reported; return (token, reply body) pairs now complete.

        Raises WorkerConfigError when the worker cannot start at all.
        """
        if self._sentinel is not None and self._sentinel in events:
            self.supervisor.reap()  # our worker exited; a successor is started only if needed
            self._watch_sentinel(self.supervisor.sentinel)
        # Replies already received are taken before a disconnection replaces the socket.
        replies = self._receive() if self._socket in events else []
        if self._monitor in events:
            replies += self._watch_connection()
        if self.busy() and not self.connected:
            self._ensure_worker()
            if self._failing_for() > GIVE_UP_S:
                replies += self._give_up()
        return replies

    def _failing_for(self) -> float:
        """Seconds that requests have been waiting for a worker that is not there."""
        if self.supervisor is not None:
            return self.supervisor.failing_for()  # counts deaths, not only disconnections
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
        return time.monotonic() - self._unreachable_since

    def close(self) -> None:
        self._watch_sentinel(None)
        self.poller.unregister(self._socket)
        self.poller.unregister(self._monitor)
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self.context.term()

    # -- sockets ---------------------------------------------------------------------------

    def _open(self) -> tuple[zmq.Socket, zmq.Socket]:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, codec.MAX_REPLY_BYTES)  # a bigger frame drops the peer
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        if not self.address.startswith("ipc://"):
            # Off this machine a peer can vanish without a word: heartbeats notice.
            sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_MS * 3)
        if self.curve is not None:
            sock.curve_secretkey = self.curve.secret
            sock.curve_publickey = self.curve.public
            sock.curve_serverkey = self.curve.server_public
        monitor = sock.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        )
        sock.connect(self.address)
        self.poller.register(sock, zmq.POLLIN)
        self.poller.register(monitor, zmq.POLLIN)
        return sock, monitor

    def _reopen(self) -> list[tuple[Any, dict[str, Any]]]:
        """Replace the socket and resend every request in flight, in order.

        Returns the replies that had already arrived on the old socket: those requests are
        answered, not resent. Whatever the old socket still queued to send is discarded.
        """
        replies = self._drain()
        self.poller.unregister(self._socket)
        self.poller.unregister(self._monitor)
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._socket, self._monitor = self._open()
        self.connected = False
        self._send(list(self.in_flight.values()))
        if self.in_flight:
            log.info("resent %d requests in flight", len(self.in_flight))
        return replies

    def _watch_connection(self) -> list[tuple[Any, dict[str, Any]]]:
        """Follow the socket's connection; returns replies taken from a socket replaced."""
        for event, _ in pending_events(self._monitor):
            if event == zmq.EVENT_CONNECTED:
                self.connected = True
                self._unreachable_since = None
                self._delivered.update(self.in_flight)
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise WorkerRefused(f"the worker at {self.address} refused this node's key")
            elif event == zmq.EVENT_DISCONNECTED:
                log.warning("worker at %s disconnected", self.address)
                replies = self._reopen()
                if self.busy():
                    self._ensure_worker()
                return replies  # the old monitor is closed
        return []

    def _receive(self) -> list[tuple[Any, dict[str, Any]]]:
        replies = self._drain()
        self._fill_window()
        return replies

    def _drain(self) -> list[tuple[Any, dict[str, Any]]]:
        """Every reply waiting on the socket, matched to what it answers."""
        replies = []
        # Asking is cheaper than the zmq.Again exception a blind recv raises at the end.
        while self._socket.getsockopt(EVENTS) & POLLIN:
            frames = self._socket.recv_multipart()
            for index in range(0, len(frames) - 1, 2):
                reply = self._unpack(frames[index : index + 2])
                if reply is not None:
                    replies += self._complete(*reply)
        return replies

    def _unpack(self, frames: list[bytes]) -> tuple[bytes, dict[str, Any]] | None:
        if frames[1] == self._last_frame:
            # The worker's unchanged status: the same bytes give the same body object.
            return frames[0], self._last_body
        try:
            request_id, body = codec.unpack_reply(frames, self._bodies.unpack)
        except codec.CodecError as exc:
            log.error("dropping an unreadable reply from the worker: %s", exc)
            return None
        self._last_frame, self._last_body = frames[1], body
        return request_id, body

    def _complete(self, request_id: bytes, body: dict[str, Any]) -> list[tuple[Any, dict]]:
        """The caller's token and body for a reply, unless it answers nothing in flight.

        A progress body leaves its request in flight: the final reply is still to come.
        """
        if before_reply(body):
            outstanding = self.in_flight.get(request_id)
            return [] if outstanding is None else [(outstanding.token, body)]
        outstanding = self.in_flight.pop(request_id, None)
        if outstanding is None:
            return []  # a duplicate answer to a request that was resent
        self._delivered.discard(request_id)
        if request_id == self._writing:
            self._writing = None
        if outstanding.kind == "health" and body["type"] == "health_ok":
            body = {**body, "worker_restarts": self.restarts}
        elif outstanding.kind == "cancel" and body["type"] == "cancel_ok":
            counted = body.get("cancelled")
            counted = counted if isinstance(counted, int) else 0  # the sum must not fail
            if counted:
                self._hold_cancelled(outstanding.names)
            body = {**body, "cancelled": counted + outstanding.cancelled_here}
        if self.supervisor is not None:
            self.supervisor.answered()
        return [(outstanding.token, body)]

    def _hold_cancelled(self, names: tuple[bytes, ...]) -> None:
        """Mark the writes a worker said it cancelled, so that a resend never starts them.

        A node has one write in flight at a time, so a cancel names at most one and a
        count above 0 means the worker reached it: queued there or running. Should that
        worker die before the write's reply comes, the next one gets it marked and answers
        error 14 (with the steps it took, if an earlier worker began it), never running it.
        """
        for name in names:
            outstanding = self.in_flight.get(name)
            if outstanding is not None:
                marked = codec.mark_cancelled(outstanding.frame)
                self.in_flight[name] = outstanding._replace(frame=marked)
                log.info("the worker took the cancel of write %s: it will never start",
                         name.hex())

    def _fill_window(self) -> None:
        """Send from the backlog while the window has room; a write waits for its turn.

        A write (anything but a read) goes out only once everything before it is answered.
        Reads are not stored, so a read resent after a crash runs again: were a write sent
        behind it, the read could run after the write it precedes and tell a later state.
        Nothing goes out behind a write until it is answered: the worker answers reads at
        once from the last committed state, so a read sent beside the write before it
        would tell the state before that write.
        """
        sending = []
        while self.backlog and len(self.in_flight) < self.window and self._writing is None:
            head = self.backlog[0]
            if head.kind not in READS:
                if self.in_flight or sending:
                    break
                self._writing = head.request_id
            self.backlog.popleft()
            self._put_in_flight(head)
            sending.append(head)
        self._send(sending)

    def _put_in_flight(self, outstanding: Outstanding) -> None:
        """Count a request as in flight; the caller sends it."""
        self.in_flight[outstanding.request_id] = outstanding
        if self.connected:
            self._delivered.add(outstanding.request_id)

    def _send(self, outstanding: list[Outstanding]) -> None:
        """Send requests, up to MESSAGE_REQUESTS to a message: each message costs more than
        a request in it, and the worker answers a message with one message."""
        for start in range(0, len(outstanding), MESSAGE_REQUESTS):
            chunk = outstanding[start : start + MESSAGE_REQUESTS]
            self._socket.send_multipart([request.frame for request in chunk])
            if log.isEnabledFor(logging.DEBUG):
                log.debug("sent %s", ", ".join(f"{r.kind} {r.request_id.hex()}" for r in chunk))

    # -- the worker process ----------------------------------------------------------------

    def _ensure_worker(self) -> None:
        """Have the supervisor start a worker if needed, and watch the child's exit."""
        if self.supervisor is not None:
            self.supervisor.ensure()
            self._watch_sentinel(self.supervisor.sentinel)

    def _watch_sentinel(self, sentinel: int | None) -> None:
        if sentinel == self._sentinel:
            return
        if self._sentinel is not None:
            self.poller.unregister(self._sentinel)
        if sentinel is not None:
            self.poller.register(sentinel, zmq.POLLIN)
        self._sentinel = sentinel

    def _give_up(self) -> list[tuple[Any, dict[str, Any]]]:
        """Answer every waiting request with error 13: no worker is there to run it.

        The socket is replaced first, so that nothing it still queues can reach a worker
        that appears later: a request answered "not run" never runs. One that a worker may
        have received before it went says so instead. The clock starts anew for the next.
        """
        replies = self._drain()  # answers that came at the last moment are the true ones
        waiting = [*self.in_flight.values(), *self.backlog]
        self.in_flight.clear()
        self.backlog.clear()
        self._writing = None
        replies += self._reopen()  # with nothing in flight, nothing is sent again
        failing = self._failing_for()
        if self.supervisor is None:
            text = f"the worker at {self.address} has been unreachable for {failing:.0f} s"
            words = ""
            self._unreachable_since = None
        else:
            unreachable = self.supervisor.unreachable_owner()
            if unreachable is not None:
                text, words = f"no worker answered for {failing:.0f} s: {unreachable}", ""
            else:
                text = f"the worker keeps dying without answering (for {failing:.0f} s)"
                words = self.supervisor.last_words()
            self.supervisor.restart_clock()
        if words:
            words = f"; it last logged: {words.splitlines()[-1]}"
        log.error("%s; answering %d requests with error 13", text, len(waiting))
        for outstanding in waiting:
            if outstanding.request_id in self._delivered:
                outcome = "; a worker may have received it before it went: check status"
            else:
                outcome = "; not run"
            body = ReplyError(CRASH, text + outcome + words).body()
            replies.append((outstanding.token, body))
        self._delivered.clear()
        return replies
