"""Twilio-only fixtures (defined in ``harness.py``, shared with ``tests/test_api.py``)."""

from tests.twilio.harness import (  # noqa: F401
    fixture_crm,
    fixture_fake_twilio,
    fixture_make_twilio_edge,
    fixture_session,
    fixture_twilio_edge,
)
