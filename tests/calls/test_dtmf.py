"""The ``send_dtmf`` request on its own: what is taken, what is refused and why, its timing."""

from __future__ import annotations

import re
from typing import Any

import pytest

from telephony_edge.calls import dtmf
from telephony_edge.calls.dtmf import DtmfRequest, Tone


def test_keys_pauses_and_lowercase_letters_are_taken() -> None:
    assert dtmf.parse({"digits": "0123456789*#ABCD"}) == DtmfRequest("0123456789*#ABCD", 250)
    assert dtmf.parse({"digits": "ww1w2d", "duration_ms": 40}) == DtmfRequest("ww1w2D", 40)
    assert dtmf.parse({"digits": "9", "duration_ms": 2000}).duration_ms == 2000


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({}, "non-empty string"),
        ({"digits": ""}, "non-empty string"),
        ({"digits": 12}, "non-empty string"),
        ({"digits": "1" * 33}, "longer than 32"),
        ({"digits": "12x"}, "not 'X'"),
        ({"digits": "1 2"}, "not ' '"),
        ({"digits": "1\u00b2"}, "not '\\\\xb2'"),
        ({"digits": "www"}, "only pauses"),
        ({"digits": "1", "duration_ms": 39}, "40 to 2000"),
        ({"digits": "1", "duration_ms": 2001}, "40 to 2000"),
        ({"digits": "1", "duration_ms": 250.0}, "integer"),
        ({"digits": "1", "duration_ms": "250"}, "integer"),
        ({"digits": "1", "duration_ms": True}, "integer"),
    ],
)
def test_anything_else_is_refused_with_the_reason(data: dict[str, Any], why: str) -> None:
    with pytest.raises(dtmf.BadDtmf, match=re.escape(why)):
        dtmf.parse(data)


def test_the_schedule_spaces_keys_by_the_gap_and_pauses_by_half_a_second() -> None:
    request = DtmfRequest("1w2#", 100)
    assert list(dtmf.schedule(request)) == [
        Tone("1", 0, 100),
        Tone("2", 200 + dtmf.PAUSE_MS, 100),
        Tone("#", 400 + dtmf.PAUSE_MS, 100),
    ]
    assert dtmf.total_ms(request) == 3 * (100 + dtmf.GAP_MS) + dtmf.PAUSE_MS
    assert request.keys == "12#"
