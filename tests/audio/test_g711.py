"""G.711 against the ITU-T definition, computed here from segment and mantissa."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from telephony_edge.audio import g711
from telephony_edge.audio.g711 import Law


def itu_ulaw(code: int) -> int:
    """ITU-T G.711 μ-law decoder output, scaled from 14 to 16 bits.

    The transmitted code is the bit-inverted sign/segment/mantissa word; the
    decoded magnitude in 14-bit units is ``(2*mantissa + 33) * 2**segment - 33``
    (mid-points of the decision intervals), sign bit set = negative.
    """
    word = ~code & 0xFF
    segment, mantissa = (word >> 4) & 0x7, word & 0xF
    magnitude = ((2 * mantissa + 33) << segment) - 33
    return 4 * (-magnitude if word & 0x80 else magnitude)


def itu_alaw(code: int) -> int:
    """ITU-T G.711 A-law decoder output, scaled from 13 to 16 bits.

    The transmitted code has its even bits inverted (XOR 0x55); magnitude in
    13-bit units is ``2*mantissa + 1`` in segment 0 and
    ``(2*mantissa + 33) * 2**(segment - 1)`` above; sign bit set = positive.
    """
    word = code ^ 0x55
    segment, mantissa = (word >> 4) & 0x7, word & 0xF
    magnitude = 2 * mantissa + 1 if segment == 0 else (2 * mantissa + 33) << (segment - 1)
    return 8 * (magnitude if word & 0x80 else -magnitude)


REFERENCE = {Law.ULAW: itu_ulaw, Law.ALAW: itu_alaw}
ALL_CODES = bytes(range(256))
ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)


def step_16bit(law: Law, codes: NDArray[np.uint8]) -> NDArray[np.int64]:
    """Quantisation step, in 16-bit units, of each code's segment (per the ITU layout)."""
    if law is Law.ULAW:
        segment = ((~codes & 0xFF) >> 4) & 0x7
        return (2 ** (segment.astype(np.int64) + 1)) * 4
    segment = ((codes ^ 0x55) >> 4) & 0x7
    return (2 ** np.maximum(segment.astype(np.int64), 1)) * 8


def test_itu_formula_spot_values() -> None:
    # Anchors from the standard's tables, so the reference itself is checked.
    assert itu_ulaw(0xFF) == 0 and itu_ulaw(0x7F) == 0
    assert itu_ulaw(0x80) == 8031 * 4 and itu_ulaw(0x00) == -8031 * 4
    assert itu_ulaw(0xFE) == 2 * 4
    assert itu_alaw(0xD5) == 1 * 8 and itu_alaw(0x55) == -1 * 8
    assert itu_alaw(0xAA) == 4032 * 8 and itu_alaw(0x2A) == -4032 * 8


@pytest.mark.parametrize("law", list(Law))
def test_every_code_decodes_to_the_itu_value(law: Law) -> None:
    decoded = np.frombuffer(g711.decode(law, ALL_CODES), dtype=np.int16)
    expected = [REFERENCE[law](c) for c in range(256)]
    assert decoded.tolist() == expected
    assert g711.decode_table(law).tolist() == expected


def test_law_specific_functions_match_dispatch() -> None:
    assert g711.ulaw_to_pcm16(ALL_CODES) == g711.decode(Law.ULAW, ALL_CODES)
    assert g711.alaw_to_pcm16(ALL_CODES) == g711.decode(Law.ALAW, ALL_CODES)
    pcm = ALL_PCM.tobytes()
    assert g711.pcm16_to_ulaw(pcm) == g711.encode(Law.ULAW, pcm)
    assert g711.pcm16_to_alaw(pcm) == g711.encode(Law.ALAW, pcm)


@pytest.mark.parametrize("law", list(Law))
def test_round_trip_error_within_the_segment_step(law: Law) -> None:
    table = g711.decode_table(law)
    top = int(table.max())
    codes = np.frombuffer(g711.encode(law, ALL_PCM.tobytes()), dtype=np.uint8)
    back = table[codes].astype(np.int64)
    x = ALL_PCM.astype(np.int64)
    inside = np.abs(x) <= top
    steps = step_16bit(law, codes[inside])
    error = np.abs(back[inside] - x[inside])
    assert (error <= steps).all()
    # Tighter: half a step, the decoder's levels being interval mid-points,
    # plus for μ-law the 16 → 14-bit truncation in front of its quantiser.
    slack = 3 if law is Law.ULAW else 0
    assert (error <= steps // 2 + slack).all()
    # Beyond the largest code the encoder saturates instead of wrapping.
    assert (back[x > top] == top).all() and (back[x < -top] == -top).all()


@pytest.mark.parametrize("law", list(Law))
def test_encoding_is_monotonic(law: Law) -> None:
    table = g711.decode_table(law)
    back = table[np.frombuffer(g711.encode(law, ALL_PCM.tobytes()), dtype=np.uint8)]
    assert (np.diff(back.astype(np.int64)) >= 0).all()


@pytest.mark.parametrize("law", list(Law))
def test_codes_survive_decode_then_encode(law: Law) -> None:
    # Every decoded value is a reconstruction level, so it re-encodes to a
    # code with the same value (+0/-0 in μ-law are the one pair that merge).
    again = g711.decode(law, g711.encode(law, g711.decode(law, ALL_CODES)))
    assert again == g711.decode(law, ALL_CODES)


@pytest.mark.parametrize("law", list(Law))
def test_silence_byte_is_the_quietest_code(law: Law) -> None:
    value = int(g711.decode_table(law)[g711.silence_byte(law)])
    assert abs(value) == int(np.abs(g711.decode_table(law)).min())
    assert value >= 0
