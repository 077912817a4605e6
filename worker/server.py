"""The worker's ZeroMQ loop: reads answered at once, writes run one at a time on a writer thread.

    node DEALER --[msgpack {"id", "type"}]--> ROUTER (socket thread)
        status, health, validate, history --> read Engine --> reader store --> reply now
        status, the reader's schema stale --> write Engine, its store lent between two of the
                                              write's transactions (WorkerServer.status)
        cancel                            --> Writer.cancel() (interrupts)  --> reply now
        migrate, rollback, baseline,      --> Writer queue
        adopt, resolve, lint, verify, dump
    Writer thread: write Engine --> store --> outbox + wake pipe --> socket thread --> node

Only the socket thread touches ZeroMQ sockets. Writes run in arrival order, one at a time
(this process is the database's single writer); reads use a second connection, so they
never wait behind a write and see the last committed state (a status may wait for the
running write's next commit, LEND_WAIT_S at most, rather than have that connection read the
whole schema anew after a migration's DDL). ROUTER hands messages over
fairly, taking turns between connected nodes. The loop stops when SIGTERM or SIGINT arrives
(the write in progress finishes its migration first) or, if asked, a while after the last
node disconnected with no write left.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import zmq

from broker import codec, kinds
from broker.errors import CRASH, MALFORMED_REQUEST, UNKNOWN_TYPE, ReplyError
from broker.monitor import pending_events
from broker.runs import RunPacker
from broker.stopping import StopRequest
from worker.engine import Engine, Interrupted
from worker.params import Params

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

    from broker.keys import CurveKeys

log = logging.getLogger(__name__)

POLL_MS = 500  # wake-up period for the idle check when nothing happens
HELD_RETRY_MS = 10  # while a slow node's replies are held: how soon they are offered again
SENT, FULL, GONE = object(), object(), object()  # what became of a message offered to a node
BATCH = 64  # messages taken from the socket per wake-up before looking at signals again
# Plain ints: send_multipart combines enum flags per frame, a measurable cost per reply.
SEND_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
SEND_LAST = int(zmq.NOBLOCK)
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
MAX_CANCEL_IDS = 256  # request ids one cancel may name: a node's whole window
# How long a status waits for a running write to lend it the owner's connection at its next
# commit, before its own connection reads the whole schema anew (see WorkerServer.status).
LEND_WAIT_S = 0.02

Handler = Callable[[bytes, Params], dict[str, Any]]


class Job(NamedTuple):
    """A write waiting for the writer thread, and where its reply goes."""

    peer: bytes
    request_id: bytes
    handler: Handler
    params: Params
    cancelled: bool = False  # resent after an earlier worker acknowledged its cancel


class Outbox:
    """Frames the writer thread hands to the socket thread, which alone may send them; a
    byte in a pipe wakes the socket thread's poll."""

    def __init__(self) -> None:
        self._frames: queue.SimpleQueue[tuple[bytes, list[bytes]]] = queue.SimpleQueue()
        self.wake_read, self._wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self._wake_write, False)

    def put(self, peer: bytes, frames: list[bytes]) -> None:
        self._frames.put((peer, frames))
        # A full pipe holds wake-ups enough: the socket thread will look.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    def take(self) -> list[tuple[bytes, list[bytes]]]:
        """Everything waiting, in the order it was put."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_read, 4096)
        taken = []
        while not self._frames.empty():
            taken.append(self._frames.get_nowait())
        return taken

    def close(self) -> None:
        os.close(self.wake_read)
        os.close(self._wake_write)


class Writer:
    """Runs writes one at a time, in arrival order, on a thread of its own that alone uses
    the store's connection; each reply, and each progress body, goes to the outbox.

    A cancel marks a queued write (it is answered "cancelled" without running) or the
    running one (the engine sees `cancelled()` at its next cancellation point, and a
    statement of migration code in progress is interrupted). On close() the write in
    progress finishes its migration and the queued ones are left unanswered: their nodes
    send them again to the next worker.
    """

    def __init__(self, engine: Engine, outbox: Outbox) -> None:
        self.engine = engine
        self.outbox = outbox
        self._lock = threading.Condition()
        self._jobs: deque[Job] = deque()
        self._cancelled: set[bytes] = set()  # queued ids cancelled before they started
        self._current: Job | None = None
        self._current_cancelled = False
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="writer", daemon=True)
        self.completed = 0  # writes answered, for health's requests_served
        engine.cancelled = self.current_cancelled
        engine.on_progress = self._progress

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            self._jobs.append(job)
            if job.cancelled:
                # Acknowledged by a worker that died since: it must never start here.
                self._cancelled.add(job.request_id)
                log.warning("request %s arrived cancelled (an earlier worker took its cancel);"
                            " it will not start", job.request_id.hex())
            self._lock.notify()

    def idle(self) -> bool:
        with self._lock:
            return self._current is None and not self._jobs

    def current_cancelled(self) -> bool:
        return self._current_cancelled

    def cancel(self, request_ids: list[bytes]) -> list[bytes]:
        """Cancel those of `request_ids` that are queued or running; returns them."""
        reached = []
        interrupt = False
        with self._lock:
            queued = {job.request_id for job in self._jobs} - self._cancelled
            for request_id in request_ids:
                if request_id in queued:
                    self._cancelled.add(request_id)
                    reached.append(request_id)
                elif (
                    self._current is not None
                    and self._current.request_id == request_id
                    and not self._current_cancelled
                ):
                    self._current_cancelled = interrupt = True
                    reached.append(request_id)
        if interrupt:
            self.engine.wake.set()  # a pause between tries of a step
            self.engine.store.interrupt()
        return reached

    def close(self) -> None:
        """Finish the write in progress (up to its migration in progress), then stop."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join()

    def _loop(self) -> None:
        with self.engine.store.writing():
            self._settle()  # what a killed worker left in the -wal, before anything is asked
        while True:
            with self._lock:
                while not self._jobs and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return
                job = self._jobs.popleft()
                unstarted = job.request_id in self._cancelled
                self._cancelled.discard(job.request_id)
                # A write cancelled while queued starts cancelled: if a worker that died had
                # begun it, it stops before its next step (Engine.cancel_unstarted).
                self._current, self._current_cancelled = job, unstarted
            with self.engine.store.writing():
                self._run(job, unstarted)
                self._settle()

    def _run(self, job: Job, unstarted: bool) -> None:
        try:
            handler = job.handler
            if unstarted:
                handler = functools.partial(self.engine.cancel_unstarted, resume=job.handler)
            request_id, body = job.request_id, run_handler(handler, job.request_id, job.params)
        finally:
            with self._lock:
                self._current, self._current_cancelled = None, False
        if body is not None:
            self.completed += 1
            self.outbox.put(job.peer, codec.pack_reply(request_id, packed_reply(body)))

    def _settle(self) -> None:
        try:
            self.engine.store.settle()
        except Exception as exc:  # a busy reader, a full disk: the next write settles
            log.warning("could not settle the database after a write: %s", exc)

    def _progress(self, request_id: bytes, body: dict[str, Any]) -> None:
        job = self._current
        if job is not None and job.request_id == request_id:
            self.outbox.put(job.peer, codec.pack_reply(request_id, packed_reply(body)))


class WorkerServer:
    def __init__(
        self,
        read_engine: Engine,
        write_engine: Engine,
        address: str,
        describe: dict[str, Any],
        idle_exit_s: float | None,
        stop: StopRequest,
        curve: CurveKeys | None = None,
        target: str = "",
    ) -> None:
        """Serve reads with `read_engine` (its own connection, this thread) and writes with
        `write_engine` (the owner's connection, the writer thread). A request naming a
        database other than `target` (Endpoint.target) is refused."""
        self.engine = read_engine
        self.target = target
        self.curve = curve  # required off this machine: only authorized node keys get in
        self.address = address
        self.describe = describe  # fixed facts for health replies (database, migrations)
        self.idle_exit_s = idle_exit_s
        self.started = time.monotonic()
        self.served = 0  # requests answered by this thread; the writer counts its own
        self.stop = stop  # set by SIGTERM or SIGINT, whenever they came
        self.nodes: set[int] = set()  # file descriptors of connected peers, from the monitor
        self.idle_since = time.monotonic()
        self._last_body: dict[str, Any] | None = None
        self._last_packed = b""
        self._packer = RunPacker()  # a changed status repacks only its changed runs
        # Messages for nodes whose queue is full (they read slowly), oldest first: a reply
        # is held until its node takes it, never dropped, and a node's order is kept.
        self._held: dict[bytes, deque[list[bytes]]] = {}
        self.outbox = Outbox()
        self.writer = Writer(write_engine, self.outbox)
        write_engine.should_stop = self.stopping
        self.handlers: dict[str, Handler] = {
            "migrate": write_engine.migrate,
            "rollback": write_engine.rollback,
            "baseline": write_engine.baseline,
            "adopt": write_engine.adopt,
            "resolve": write_engine.resolve,
            "status": self.status,
            "validate": read_engine.validate,
            "history": read_engine.history,
            "dump": write_engine.dump,
            "lint": write_engine.lint,
            "verify": write_engine.verify,
            "health": self.health,
            "cancel": self.cancel,
        }
        assert self.handlers.keys() == kinds.WORKER_KINDS, "broker/kinds.py lists them all"

    def stopping(self) -> bool:
        """True once the worker is to stop: a signal came, or the database file it has open
        is no longer the one at its path (deleted, or replaced by a restored backup). Then
        the next worker, which a node starts at once, opens the file now there and gets
        the requests left unanswered here, instead of this one serving a file nobody reads.
        """
        if not self.stop.requested:
            moved = self.writer.engine.store.moved()
            if moved is not None:
                log.warning("%s while this worker ran; stopping, so that the next worker opens"
                            " the file now at that path", moved)
                self.stop.requested = True
        return self.stop.requested

    def status(self, request_id: bytes, params: Params) -> dict[str, Any]:
        """Status read on the owner's connection when the reader's would first read the
        whole schema anew (SQLite, after a migration's DDL: a cost that grows with every
        table) and the owner's is free, or lent by a running write at its next commit within
        LEND_WAIT_S; else on the reader's. Both read the last commit."""
        if self.engine.store.stale_schema():
            with self.writer.engine.store.lent(LEND_WAIT_S) as lent:
                if lent:
                    return self.writer.engine.status(request_id, params)
        return self.engine.status(request_id, params)

    def health(self, request_id: bytes, params: Params) -> dict[str, Any]:
        running = self.writer.engine.running
        return {
            "type": "health_ok",
            "worker_pid": os.getpid(),
            **self.describe,
            **self.engine.store.facts(),
            "endpoint": self.address,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "requests_served": self.served + self.writer.completed,
            "nodes_connected": len(self.nodes),
            "running": None if running is None else {
                "version": running.version,
                "name": running.name,
                "action": running.action,
                "since_s": round(time.monotonic() - running.since, 3),
                "done": running.done,
                "total": running.total,
                "attempt": running.attempt,
                "waiting": self._waiting(),
            },
        }

    def _waiting(self) -> dict[str, Any] | None:
        """What the running step waits for, and who holds it (PostgreSQL), or None."""
        wait = self.writer.engine.store.waiting()
        return None if wait is None else wait.as_reply()

    def cancel(self, request_id: bytes, params: Params) -> dict[str, Any]:
        """Cancel the writes a node names: queued ones never run, the running one stops at
        its next cancellation point; each gets its own error 14 reply."""
        reached = self.writer.cancel(params.request_ids("ids", MAX_CANCEL_IDS))
        if reached:
            log.warning("cancelled %d write(s) at a node's request: %s", len(reached),
                        ", ".join(request_id.hex() for request_id in reached))
        return {"type": "cancel_ok", "cancelled": len(reached)}

    def run(self, context: zmq.Context) -> None:
        """Serve until stopped; the socket is closed whatever happens."""
        # A signal writes a byte here, which wakes the poll below at once. One that came
        # earlier has set the stop flag already, which the loop reads before it waits.
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        previous_wakeup = signal.set_wakeup_fd(wake_write)
        self.writer.start()
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable reply raises, never vanishes
        router.setsockopt(zmq.MAXMSGSIZE, codec.MAX_REQUEST_BYTES)
        router.setsockopt(zmq.LINGER, 0)
        monitor = router.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        authenticator = self._authenticate(context, router) if self.curve else None
        try:
            # The socket file gets its final mode as it is made: nobody else may connect.
            old_umask = os.umask(0o077)
            try:
                router.bind(self.address)
            finally:
                os.umask(old_umask)
            log.info("worker %d serving %s", os.getpid(), self.address)
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            poller.register(wake_read, zmq.POLLIN)
            poller.register(self.outbox.wake_read, zmq.POLLIN)
            while not self.stop.requested and not self._idle_too_long():
                # ZeroMQ says nothing when a node's queue drains: offer held replies again.
                events = dict(poller.poll(HELD_RETRY_MS if self._held else POLL_MS))
                if self._held:
                    self._send_held(router)
                if monitor in events:
                    self._track_peers(monitor)
                if wake_read in events:
                    os.read(wake_read, 4096)
                if self.outbox.wake_read in events:
                    self._send_outbox(router)
                if router in events:
                    self._serve_ready(router)
            # The write in progress finishes its migration (and is answered if that was its
            # last); queued writes are left for the next worker, to which nodes resend.
            self.writer.close()
            self._send_outbox(router)
        finally:
            if authenticator is not None:
                authenticator.stop()
            signal.set_wakeup_fd(previous_wakeup)
            router.disable_monitor()
            monitor.close(linger=0)
            router.close(linger=0)
            os.close(wake_read)
            os.close(wake_write)
            self.outbox.close()
        log.info("worker %d stopped after %d requests", os.getpid(), self.served)

    def _authenticate(self, context: zmq.Context, router: zmq.Socket) -> ThreadAuthenticator:
        """Make `router` a CURVE server that lets in only the authorized node keys."""
        from zmq.auth.thread import ThreadAuthenticator  # only TCP workers pay for it

        authenticator = ThreadAuthenticator(context, log=logging.getLogger("worker.auth"))
        authenticator.start()
        authenticator.configure_curve(domain="*", location=str(self.curve.authorized))
        router.curve_secretkey = self.curve.secret
        router.curve_publickey = self.curve.public
        router.curve_server = True
        return authenticator

    def _idle_too_long(self) -> bool:
        if self.idle_exit_s is None or self.nodes or not self.writer.idle():
            return False
        if time.monotonic() - self.idle_since < self.idle_exit_s:
            return False
        log.info("no node connected for %.1f s; exiting", self.idle_exit_s)
        return True

    def _track_peers(self, monitor: zmq.Socket) -> None:
        for event, peer in pending_events(monitor):
            if event == zmq.EVENT_ACCEPTED:
                self.nodes.add(peer)
            elif event == zmq.EVENT_DISCONNECTED:
                self.nodes.discard(peer)
                # ZeroMQ drops a frame over MAXMSGSIZE by closing its connection, unanswered.
                log.info("a node's connection closed (%d remain): it left, or it sent a frame"
                         " of more than %d bytes", len(self.nodes), codec.MAX_REQUEST_BYTES)
                if not self.nodes:
                    self.idle_since = time.monotonic()

    def _serve_ready(self, router: zmq.Socket) -> None:
        """Serve the messages waiting, one node's message at a time, as ROUTER hands them out.

        A message holds one or more requests (a frame each); the replies to them go back in
        one message, two frames per reply, in the same order.
        """
        self._serve_messages(router)

    def _serve_messages(self, router: zmq.Socket) -> None:
        for _ in range(BATCH):
            # Asking is cheaper than the zmq.Again exception a blind recv raises at the end.
            if not router.getsockopt(EVENTS) & POLLIN or self.stopping():
                return
            peer, *requests = router.recv_multipart()
            # The requests of one message were sent together, so one snapshot of the folder
            # and database answers them; a later message may follow a reply already sent.
            self.engine.new_batch()
            self.writer.engine.new_batch()
            replies = []
            for frame in requests[: codec.MAX_MESSAGE_REQUESTS] or [b""]:
                answered = self._take(peer, frame)
                if answered is not None:
                    self.served += 1
                    replies += codec.pack_reply(*answered)
            if len(requests) > codec.MAX_MESSAGE_REQUESTS:
                replies += codec.pack_reply(None, self._too_many(len(requests)))
            if replies:
                self._send(router, peer, replies)

    def _send_outbox(self, router: zmq.Socket) -> None:
        for peer, frames in self.outbox.take():
            self._send(router, peer, frames)

    def _too_many(self, count: int) -> bytes:
        """One error for the requests of a message beyond the bound: none of them ran."""
        limit = codec.MAX_MESSAGE_REQUESTS
        text = (
            f"a message holds {count} requests and at most {limit} are served;"
            f" the last {count - limit} were not run"
        )
        return codec.pack(ReplyError(MALFORMED_REQUEST, text).body())

    def _send(self, router: zmq.Socket, peer: bytes, frames: list[bytes]) -> None:
        """Send one message to a node now, or hold it behind those already held for it."""
        held = self._held.get(peer)
        if held is not None:
            held.append(frames)
        elif self._offer(router, peer, frames) is FULL:
            self._held[peer] = deque([frames])
            log.info("node %s reads slowly: holding its replies until it takes them", peer.hex())

    def _send_held(self, router: zmq.Socket) -> None:
        for peer, held in list(self._held.items()):
            while held:
                outcome = self._offer(router, peer, held[0])
                if outcome is FULL:
                    break
                if outcome is GONE:
                    log.warning("node %s left; dropping the %d replies held for it",
                                peer.hex(), len(held))
                    held.clear()
                else:
                    held.popleft()
            if not held:
                del self._held[peer]

    def _offer(self, router: zmq.Socket, peer: bytes, frames: list[bytes]) -> object:
        """Send a message: SENT, FULL (the node's queue is full: keep it for later) or GONE
        (the node left: it resends to whichever worker it reaches, and a write's stored
        reply answers it)."""
        try:
            # Never block on one node: the others would wait. ROUTER_MANDATORY refuses the
            # first frame (EAGAIN) when the node's queue is full; the rest then go with it.
            router.send(peer, SEND_MORE)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EAGAIN:
                return FULL
            log.warning("could not reply to node %s: %s", peer.hex(), exc)
            return GONE
        for frame in frames[:-1]:
            router.send(frame, SEND_MORE)
        router.send(frames[-1], SEND_LAST)
        return SENT

    def _check_target(self, named: Any) -> None:
        """Refuse a request meant for another database: two spellings that a node took for
        different databases, or different ones it took for one, must never meet here."""
        if named is None or named == self.target:
            return
        if not isinstance(named, str):
            raise ReplyError(MALFORMED_REQUEST, "target must be a string")
        log.error("refused a request for %s: this worker serves %s", named, self.target)
        raise ReplyError(CRASH, f"the worker at {self.address} serves {self.target}, not"
                                f" {named} that this request names; nothing ran")

    def _packed(self, body: dict[str, Any]) -> bytes:
        """The body packed; the read engine hands out the same body object while it is
        current, so an unchanged status is packed once."""
        if body is not self._last_body:
            self._last_body, self._last_packed = body, packed_reply(body, self._packer.pack)
        return self._last_packed

    def _take(self, peer: bytes, frame: bytes) -> tuple[bytes | None, bytes] | None:
        """Answer one request frame now (its id and packed reply), or hand a write to the
        writer thread (None: its reply comes through the outbox)."""
        request_id = None
        try:
            if not frame:
                raise ReplyError(MALFORMED_REQUEST, "a message must hold at least one request")
            request = codec.unpack(frame)
            request_id = request.get("id")
            if not isinstance(request_id, bytes) or len(request_id) > codec.MAX_REQUEST_ID_BYTES:
                request_id = None
                raise ReplyError(MALFORMED_REQUEST, "request id must be bytes of at most 64")
            kind = request.get("type")
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                known = ", ".join(["init", *self.handlers])
                raise ReplyError(UNKNOWN_TYPE, f"unknown request type {kind!r}; known: {known}")
            log.debug("request %s: %s", request_id.hex(), kind)
            self._check_target(request.get("target"))
            params = _params(request)
        except codec.CodecError as exc:
            return request_id, self._packed(ReplyError(MALFORMED_REQUEST, str(exc)).body())
        except ReplyError as error:
            return request_id, self._packed(error.body())
        if kind in kinds.WRITES or kind in kinds.DRY_RUNS:
            self.writer.submit(Job(peer, request_id, handler, params,
                                   cancelled=request.get("cancelled") is True))
            return None
        body = run_handler(handler, request_id, params)
        assert body is not None, "only writes are interrupted by a stop"
        return request_id, self._packed(body)


def run_handler(handler: Handler, request_id: bytes, params: Params) -> dict[str, Any] | None:
    """Run one request's handler; its reply body, an error body for what it raised, or
    None when a stop interrupted it (the node sends it again to the next worker)."""
    try:
        return handler(request_id, params)
    except Interrupted as stop:
        log.info("request %s not finished: %s", request_id.hex(), stop)
        return None
    except ReplyError as error:
        return error.body()
    except Exception as exc:
        log.exception("request failed unexpectedly")
        return ReplyError(CRASH, f"the worker failed unexpectedly: {exc}").body()


def packed_reply(
    body: dict[str, Any], pack: Callable[[dict[str, Any]], bytes] = codec.pack
) -> bytes:
    """The body packed (by `pack`); one that cannot be packed, or is larger than a node
    accepts, is answered with error 13 instead: whatever a reply holds, the worker answers
    and goes on.
    """
    try:
        packed = pack(body)
        if len(packed) > codec.MAX_REPLY_BYTES:
            raise ValueError(
                f"the reply is {len(packed)} bytes, more than the"
                f" {codec.MAX_REPLY_BYTES} a node accepts"
            )
    except Exception as exc:
        log.exception("cannot send a %s reply", body.get("type"))
        cause = str(exc).encode("utf-8", "backslashreplace").decode()
        return codec.pack(ReplyError(CRASH, f"the worker could not send its reply: {cause}").body())
    return packed


def _params(request: dict[str, Any]) -> Params:
    """The request's fields and sender; raises error 12 when they are not shaped as sent."""
    fields = request.get("params", {})
    src = request.get("src")
    if not isinstance(fields, dict):
        raise ReplyError(MALFORMED_REQUEST, "params must be a map of the request's fields")
    if src is not None and not isinstance(src, str):
        raise ReplyError(MALFORMED_REQUEST, "src must be a string")
    return Params(fields, src)
