"""The Twilio fixtures (``tests/twilio/harness.py``), for recorded calls over Twilio."""

from tests.twilio.harness import (  # noqa: F401
    fixture_crm,
    fixture_fake_twilio,
    fixture_make_twilio_edge,
    fixture_session,
)
