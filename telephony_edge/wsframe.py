"""Writing WebSocket frames straight to the transport, without awaiting.

aiohttp's ``send_frame`` is a coroutine (it may wait for the transport to
drain), so a leg that must never wait on its network (see
:class:`~telephony_edge.calls.leg.Leg`) cannot call it from the pacer's
synchronous tick, and on the caller → agent path it costs a coroutine chain
per 20 ms frame. A server's frame (RFC 6455 §5.2: unmasked, final, no
extension) is a 2-10 byte header before the payload; a client's is masked
with a fresh random key (§5.3). The legs and the agent link write them
themselves after checking the socket's backlog, and leave every other frame
(close, ping, pong) to aiohttp.
"""

from __future__ import annotations

import random
import struct

from aiohttp._websocket.helpers import websocket_mask  # C (Cython): the XOR of §5.3

OP_TEXT = 0x1
OP_BINARY = 0x2
_MASKED = 0x80
_random_key = random.Random().getrandbits  # aiohttp's own writer masks with the same


def frame_header(length: int, opcode: int = OP_TEXT) -> bytes:
    """The header of one unmasked, final frame of ``length`` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def masked_frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One final client frame of ``payload``, masked with a fresh key: header, key, data."""
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        header = bytes((first, _MASKED | length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, _MASKED | 126, length)
    else:
        header = struct.pack("!BBQ", first, _MASKED | 127, length)
    key = _random_key(32).to_bytes(4, "big")
    data = bytearray(payload)
    websocket_mask(key, data)
    return header + key + data
