"""SDES (RFC 4568): the ``a=crypto`` lines of an offer read, one chosen, ours written (sans-I/O).

Theory of operation
-------------------
SDES carries each side's SRTP master key in its SDP, in clear text: the keys
are only as secret as the signalling. So what the edge does with an offer
depends on two things the UA knows (:class:`SrtpRules`): the call's policy
(``sip.srtp``, or its trunk's ``srtp``: ``none``, ``optional``, ``required``)
and whether the keys travel safely (the INVITE came over TLS, or the operator
said ``sip.srtp_over_plain``). :func:`choose` decides for one ``m=`` line:

======================  ============================  =========================
offer                   keys safe, policy allows      otherwise
======================  ============================  =========================
``RTP/SAVP(F)``         SRTP with the first usable    refused (488)
                        ``a=crypto``; none: refused
``RTP/AVP(F)`` with     SRTP (best effort, as         plain RTP (policy
``a=crypto``            baresip's ``srtp``)           ``required``: refused)
``RTP/AVP(F)``          plain RTP                     policy ``required``:
                                                      refused
======================  ============================  =========================

A line is usable when it is well formed (tag, suite, one ``inline:`` key of
30 bytes: 128-bit key and 112-bit salt) and asks for nothing the edge does not
do: suites other than ``AES_CM_128_HMAC_SHA1_80`` and ``_32``, several master
keys, a key derivation rate, unencrypted or unauthenticated SRTP or SRTCP,
FEC keys, an unknown session parameter (RFC 4568 §6.3.7; ``-`` ones are
ignored) are not usable, and said so in the refusal. A key's lifetime is
kept (:mod:`~telephony_edge.sip.srtp` stops taking the key's packets when it
is spent, the peer having to rekey by re-INVITE) and its MKI too (the MKI
the peer puts in each packet). A malformed line is the sender's fault
(:attr:`Refused.bad`: counted as bad input); an unusable one is not.

The answer carries the offer's tag and suite and the edge's own key
(:func:`new_key`), kept for the call while the suite stays (a re-INVITE that
changes nothing must not restart our key's packet index: RFC 3711 §9.2
forbids reusing an index under one key). A call that is SRTP stays SRTP: a
re-offer without keys is refused. The edge's own offer (an INVITE without
SDP, a re-INVITE without one) carries one line, tag 1,
``AES_CM_128_HMAC_SHA1_80`` (RFC 4568's mandatory suite); :func:`accept`
reads the answer's.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from typing import Literal

Policy = Literal["none", "optional", "required"]

SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
KNOWN_SUITES = frozenset(
    {
        *SUITES,
        "F8_128_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_32",
        "AES_256_CM_HMAC_SHA1_80", "AES_256_CM_HMAC_SHA1_32", "AEAD_AES_128_GCM",
        "AEAD_AES_256_GCM",
    }
)  # fmt: skip
KEY_SALT_BYTES = 30  # 128-bit master key || 112-bit master salt
MAX_LIFETIME = 2**48  # SRTP's limit for one master key (RFC 3711 §9.2)
MAX_MKI_BYTES = 128  # RFC 4568 §6.1
MAX_WINDOW = 32768  # libsrtp's largest replay window
DEFAULT_WINDOW = 128
OFFER_TAG = 1
SAVP = ("RTP/SAVP", "RTP/SAVPF")
RTP_PROFILES = ("RTP/AVP", "RTP/AVPF", *SAVP)
_REFUSED_PARAMS = {
    "KDR": "a key derivation rate",
    "UNENCRYPTED_SRTP": "unencrypted SRTP",
    "UNENCRYPTED_SRTCP": "unencrypted SRTCP",
    "UNAUTHENTICATED_SRTP": "unauthenticated SRTP",
    "FEC_KEY": "an FEC key",
}


class CryptoError(ValueError):
    """An ``a=crypto`` line that does not follow RFC 4568: the sender's fault."""


class Unusable(ValueError):
    """A well-formed ``a=crypto`` line asking for what the edge does not do."""


class Refused(ValueError):
    """This ``m=`` line cannot be answered under the rules; ``bad``: because of a
    malformed ``a=crypto`` (the sender's fault, counted as bad input)."""

    def __init__(self, reason: str, bad: bool = False) -> None:
        super().__init__(reason)
        self.bad = bad


@dataclass(frozen=True, slots=True)
class SrtpRules:
    """What a call may do: its policy, and whether SDES keys travel safely (TLS)."""

    policy: Policy = "optional"
    keys_safe: bool = False

    @property
    def srtp_allowed(self) -> bool:
        return self.policy != "none" and self.keys_safe


#: optional, keys not safe: an SRTP offer refused, a best-effort one answered plain
DEFAULT_RULES = SrtpRules()


@dataclass(frozen=True, slots=True)
class MasterKey:
    """One side's master key: key || salt, the packets it may protect, its MKI on the wire."""

    key: bytes
    lifetime: int | None = None
    mki: bytes = b""

    def inline(self) -> str:
        text = "inline:" + base64.b64encode(self.key).decode().rstrip("=")
        if self.mki:
            text += f"|{int.from_bytes(self.mki, 'big')}:{len(self.mki)}"
        return text


@dataclass(frozen=True, slots=True)
class Crypto:
    """One ``a=crypto`` line of the peer's, read."""

    tag: int
    suite: str
    key: MasterKey
    window: int = DEFAULT_WINDOW


@dataclass(frozen=True, slots=True)
class SrtpTerms:
    """A stream's SRTP: the suite, our key (we send with it), theirs (we receive with it)."""

    tag: int
    suite: str
    local: MasterKey
    remote: MasterKey
    window: int = DEFAULT_WINDOW

    def attribute(self) -> str:
        """Our ``a=crypto`` value for the answer."""
        return f"{self.tag} {self.suite} {self.local.inline()}"


def new_key() -> MasterKey:
    return MasterKey(secrets.token_bytes(KEY_SALT_BYTES))


def _digits(text: str, max_len: int) -> bool:
    return 0 < len(text) <= max_len and text.isascii() and text.isdigit()


def _lifetime(text: str) -> int:
    if text.startswith("2^") and _digits(text[2:], 2):
        value = 1 << int(text[2:])
    elif _digits(text, 15):
        value = int(text)
    else:
        raise CryptoError("bad key lifetime")
    if not 0 < value <= MAX_LIFETIME:
        raise CryptoError("key lifetime out of range")
    return value


def _mki(text: str) -> bytes:
    value, colon, length = text.partition(":")
    if not colon or not _digits(value, 40) or not _digits(length, 3):
        raise CryptoError("bad MKI")
    size = int(length)
    if not 0 < size <= MAX_MKI_BYTES or int(value) >= 256**size:
        raise CryptoError("MKI does not fit its length")
    return int(value).to_bytes(size, "big")


def _key(params: str) -> MasterKey:
    if ";" in params:
        raise Unusable("more than one master key")
    method, colon, info = params.partition(":")
    if not colon or method.lower() != "inline":
        raise CryptoError("key method is not inline")
    parts = info.split("|")
    if len(parts) > 3:
        raise CryptoError("bad key parameters")
    encoded = parts[0]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CryptoError("key is not base64") from None
    if len(key) != KEY_SALT_BYTES:
        raise CryptoError(f"key and salt of {len(key)} bytes, not {KEY_SALT_BYTES}")
    lifetime, mki = None, b""
    for part in parts[1:]:
        if ":" in part:
            if mki:
                raise CryptoError("two MKIs")
            mki = _mki(part)
        elif lifetime is None:
            lifetime = _lifetime(part)
        else:
            raise CryptoError("two key lifetimes")
    return MasterKey(key, lifetime, mki)


def _window(params: list[str]) -> int:
    """The session parameters (RFC 4568 §6.3): the replay window, or why not usable."""
    window = DEFAULT_WINDOW
    for param in params:
        name, _, value = param.partition("=")
        if name == "WSH":
            if not _digits(value, 6):
                raise CryptoError("bad WSH")
            window = max(64, min(int(value), MAX_WINDOW))
        elif name == "KDR" and value == "0":
            continue  # no key derivation: what libsrtp does
        elif name in _REFUSED_PARAMS:
            raise Unusable(f"{_REFUSED_PARAMS[name]} is not done")
        elif name == "FEC_ORDER" or param.startswith("-"):
            continue  # no FEC here; '-' parameters may be ignored (§6.3.7)
        else:
            raise Unusable("an unknown session parameter")
    return window


def parse_crypto(value: str) -> Crypto:
    """One ``a=crypto`` value (raises :class:`CryptoError` or :class:`Unusable`)."""
    fields = value.split()
    if len(fields) < 3:
        raise CryptoError("too few fields")
    tag, suite = fields[0], fields[1]
    if not _digits(tag, 9):
        raise CryptoError("bad tag")
    if suite not in SUITES:
        raise (Unusable if suite in KNOWN_SUITES else CryptoError)(f"suite {suite[:40]}")
    key = _key(fields[2])
    return Crypto(int(tag), suite, key, _window(fields[3:]))


def choose(
    proto: str, crypto: list[str], rules: SrtpRules, keep: SrtpTerms | None = None
) -> SrtpTerms | None:
    """The SRTP of our answer to one ``m=`` line (None: plain RTP), or :class:`Refused`.

    ``keep``: the call's SRTP so far (a re-offer): our key stays while the suite does.
    """
    secure = proto.upper() in SAVP
    wants = secure or bool(crypto)
    if not wants:
        if keep is not None:
            raise Refused("a re-offer without SRTP in an SRTP call")
        if rules.policy == "required":
            raise Refused("SRTP required, the offer has none")
        return None
    if not rules.srtp_allowed:
        if not secure and rules.policy != "required" and keep is None:
            return None  # best-effort SRTP not taken: plain RTP
        if rules.policy == "none":
            raise Refused("SRTP offered; the policy is none")
        raise Refused("SDES keys over a transport that is not TLS")
    error: Refused | None = None
    for value in crypto:
        try:
            line = parse_crypto(value)
        except CryptoError as exc:
            error = Refused(f"bad a=crypto: {exc}", bad=True)
            continue
        except Unusable as exc:
            error = error or Refused(f"a=crypto not usable: {exc}")
            continue
        local = keep.local if keep is not None and keep.suite == line.suite else new_key()
        return SrtpTerms(line.tag, line.suite, local, line.key, line.window)
    raise error or Refused("SRTP offered without a=crypto")


def offer(keep: SrtpTerms | None) -> str:
    """Our ``a=crypto`` value for an offer of ours: the call's key if it has one."""
    if keep is not None:
        return keep.attribute()
    return f"{OFFER_TAG} {SUITES[0]} {new_key().inline()}"


def accept(offered: str, crypto: list[str]) -> SrtpTerms:
    """The SRTP the answer to our offer (``offered``, our ``a=crypto`` value) agreed."""
    ours = parse_crypto(offered)
    for value in crypto:
        try:
            line = parse_crypto(value)
        except (CryptoError, Unusable):
            continue
        if line.tag == ours.tag and line.suite == ours.suite:
            return SrtpTerms(line.tag, line.suite, ours.key, line.key, line.window)
    raise Refused("the answer has no a=crypto for our offer's", bad=bool(crypto))
