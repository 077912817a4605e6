"""The worker's ZeroMQ loop: receive a request, run it through the engine, send one reply.

    node DEALER --[msgpack {"id", "type"}]--> ROUTER here --> Engine --> store (SQLite)
    node DEALER <--[msgpack {"id", "body"}]-- ROUTER here <--'

Requests run one at a time (this process is the database's single writer). ROUTER hands
them over fairly, taking turns between connected nodes. The loop stops when SIGTERM or
SIGINT arrives (after finishing the request in progress) or, if asked, a while after the
last node disconnected.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from broker import codec, kinds
from broker.errors import CRASH, MALFORMED_REQUEST, UNKNOWN_TYPE, ReplyError
from broker.monitor import pending_events
from broker.stopping import StopRequest
from worker.engine import Engine, Interrupted
from worker.params import Params

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

    from broker.keys import CurveKeys

log = logging.getLogger(__name__)

POLL_MS = 500  # wake-up period for the idle check when nothing happens
BATCH = 64  # messages taken from the socket per wake-up before looking at signals again
# Plain ints: send_multipart combines enum flags per frame, a measurable cost per reply.
SEND_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
SEND_LAST = int(zmq.NOBLOCK)
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class WorkerServer:
    def __init__(
        self,
        engine: Engine,
        address: str,
        describe: dict[str, Any],
        idle_exit_s: float | None,
        stop: StopRequest,
        curve: CurveKeys | None = None,
    ) -> None:
        self.engine = engine
        self.curve = curve  # required off this machine: only authorized node keys get in
        self.address = address
        self.describe = describe  # fixed facts for health replies (database, migrations)
        self.idle_exit_s = idle_exit_s
        self.started = time.monotonic()
        self.served = 0
        self.stop = stop  # set by SIGTERM or SIGINT, whenever they came
        self.nodes: set[int] = set()  # file descriptors of connected peers, from the monitor
        self.idle_since = time.monotonic()
        self._last_body: dict[str, Any] | None = None
        self._last_packed = b""
        self.handlers: dict[str, Callable[[bytes, Params], dict[str, Any]]] = {
            "migrate": engine.migrate,
            "rollback": engine.rollback,
            "baseline": engine.baseline,
            "status": engine.status,
            "validate": engine.validate,
            "history": engine.history,
            "health": self.health,
        }
        assert self.handlers.keys() == kinds.WORKER_KINDS, "broker/kinds.py lists them all"

    def health(self, request_id: bytes, params: Params) -> dict[str, Any]:
        return {
            "type": "health_ok",
            "worker_pid": os.getpid(),
            **self.describe,
            "endpoint": self.address,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "requests_served": self.served,
            "nodes_connected": len(self.nodes),
        }

    def run(self, context: zmq.Context) -> None:
        """Serve until stopped; the socket is closed whatever happens."""
        # A signal writes a byte here, which wakes the poll below at once. One that came
        # earlier has set the stop flag already, which the loop reads before it waits.
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        previous_wakeup = signal.set_wakeup_fd(wake_write)
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
            while not self.stop.requested and not self._idle_too_long():
                events = dict(poller.poll(POLL_MS))
                if monitor in events:
                    self._track_peers(monitor)
                if wake_read in events:
                    os.read(wake_read, 4096)
                if router in events:
                    self._serve_ready(router)
        finally:
            if authenticator is not None:
                authenticator.stop()
            signal.set_wakeup_fd(previous_wakeup)
            router.disable_monitor()
            monitor.close(linger=0)
            router.close(linger=0)
            os.close(wake_read)
            os.close(wake_write)
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
        if self.idle_exit_s is None or self.nodes:
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
                if not self.nodes:
                    self.idle_since = time.monotonic()

    def _serve_ready(self, router: zmq.Socket) -> None:
        """Serve the messages waiting, one node's message at a time, as ROUTER hands them out.

        A message holds one or more requests (a frame each); the replies to them go back in
        one message, two frames per reply, in the same order.
        """
        try:
            self._serve_messages(router)
        finally:
            for handler in logging.getLogger().handlers:
                handler.flush()  # held log lines go out once the batch is answered

    def _serve_messages(self, router: zmq.Socket) -> None:
        for _ in range(BATCH):
            # Asking is cheaper than the zmq.Again exception a blind recv raises at the end.
            if self.stop.requested or not router.getsockopt(EVENTS) & POLLIN:
                return
            peer, *requests = router.recv_multipart()
            # The requests of one message were sent together, so one snapshot of the folder
            # and database answers them; a later message may follow a reply already sent.
            self.engine.new_batch()
            replies = []
            for frame in requests[: codec.MAX_MESSAGE_REQUESTS] or [b""]:
                request_id, packed = self._execute(frame)
                if packed is None:
                    break  # interrupted by a stop request: the node resends what is left
                self.served += 1
                replies += codec.pack_reply(request_id, packed)
            else:
                if len(requests) > codec.MAX_MESSAGE_REQUESTS:
                    replies += codec.pack_reply(None, self._too_many(len(requests)))
            if replies:
                self._send(router, peer, replies)

    def _too_many(self, count: int) -> bytes:
        """One error for the requests of a message beyond the bound: none of them ran."""
        limit = codec.MAX_MESSAGE_REQUESTS
        text = (
            f"a message holds {count} requests and at most {limit} are served;"
            f" the last {count - limit} were not run"
        )
        return codec.pack(ReplyError(MALFORMED_REQUEST, text).body())

    def _send(self, router: zmq.Socket, peer: bytes, frames: list[bytes]) -> None:
        try:
            # Never block on one node: the others would wait. Nodes keep their window under
            # the high-water mark, so a full queue means a node that stopped reading.
            router.send(peer, SEND_MORE)
            for frame in frames[:-1]:
                router.send(frame, SEND_MORE)
            router.send(frames[-1], SEND_LAST)
        except zmq.ZMQError as exc:
            # The node left (EHOSTUNREACH) or stopped reading; a resend of a migrate or
            # rollback will find its stored reply.
            log.warning("could not reply to node %s: %s", peer.hex(), exc)

    def _packed(self, body: dict[str, Any]) -> bytes:
        """The body packed; the engine hands out the same body object while it is current.

        A body that cannot be packed, or is larger than a node accepts, is answered with
        error 13 instead: whatever a reply holds, the worker answers and goes on.
        """
        if body is not self._last_body:
            try:
                packed = codec.pack(body)
                if len(packed) > codec.MAX_REPLY_BYTES:
                    raise ValueError(
                        f"the reply is {len(packed)} bytes, more than the"
                        f" {codec.MAX_REPLY_BYTES} a node accepts"
                    )
            except Exception as exc:
                log.exception("cannot send a %s reply", body.get("type"))
                cause = str(exc).encode("utf-8", "backslashreplace").decode()
                text = f"the worker could not send its reply: {cause}"
                packed = codec.pack(ReplyError(CRASH, text).body())
            self._last_body, self._last_packed = body, packed
        return self._last_packed

    def _execute(self, frame: bytes) -> tuple[bytes | None, bytes | None]:
        """Run one request frame; return its id and packed reply (None if interrupted)."""
        request_id, body = self._run(frame)
        return request_id, None if body is None else self._packed(body)

    def _run(self, frame: bytes) -> tuple[bytes | None, dict[str, Any] | None]:
        """Run one request frame; return its id and reply body (None if interrupted)."""
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
            body = handler(request_id, _params(request))
        except Interrupted as stop:
            log.info("request %s not finished: %s", request_id and request_id.hex(), stop)
            return request_id, None
        except codec.CodecError as exc:
            body = ReplyError(MALFORMED_REQUEST, str(exc)).body()
        except ReplyError as error:
            body = error.body()
        except Exception as exc:
            log.exception("request failed unexpectedly")
            body = ReplyError(CRASH, f"the worker failed unexpectedly: {exc}").body()
        return request_id, body


def _params(request: dict[str, Any]) -> Params:
    """The request's fields and sender; raises error 12 when they are not shaped as sent."""
    fields = request.get("params", {})
    src = request.get("src")
    if not isinstance(fields, dict):
        raise ReplyError(MALFORMED_REQUEST, "params must be a map of the request's fields")
    if src is not None and not isinstance(src, str):
        raise ReplyError(MALFORMED_REQUEST, "src must be a string")
    return Params(fields, src)
