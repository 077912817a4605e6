"""Reading ZeroMQ socket-monitor events, for sockets whose peers come and go.

pyzmq's own reader lives in zmq.utils.monitor, whose import pulls in asyncio: a fifth of a
front node's start-up. The event format is small and fixed by libzmq (a frame holding a
16-bit event id and a 32-bit value, then a frame with the endpoint), so it is read here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import zmq

EVENT_FRAME = struct.Struct("=hi")


def pending_events(monitor: zmq.Socket) -> Iterator[tuple[int, int]]:
    """Yield (event, value) for every event waiting on a monitor socket, without blocking."""
    while monitor.poll(0):
        frames = monitor.recv_multipart()
        if len(frames) == 2 and len(frames[0]) == EVENT_FRAME.size:
            yield EVENT_FRAME.unpack(frames[0])
