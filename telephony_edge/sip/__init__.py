"""The edge's own SIP core, sans-I/O: messages, SDP, transactions, dialogs, the UA.

No sockets, no asyncio and no clock in this package: bytes, events and the
current time go in; bytes to send, timers (as deadlines) and call events come
out. The asyncio transport and the provider are later steps (issue 9).
"""

from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import UaConfig

__all__ = ["UaConfig", "UserAgent"]
