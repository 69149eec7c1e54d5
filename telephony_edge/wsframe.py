"""Writing a server's WebSocket frames straight to the transport, without awaiting.

aiohttp's ``send_frame`` is a coroutine (it may wait for the transport to
drain), so a leg that must never wait on its network (see
:class:`~telephony_edge.calls.leg.Leg`) cannot call it from the pacer's
synchronous tick. A server's frame (RFC 6455 §5.2: unmasked, final, no
extension) is a 2-10 byte header before the payload; the legs write it
themselves after checking the socket's backlog, and leave every other frame
(close, ping, pong) to aiohttp.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2


def frame_header(length: int, opcode: int = OP_TEXT) -> bytes:
    """The header of one unmasked, final frame of ``length`` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)
