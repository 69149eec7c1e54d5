"""Vonage fixtures (``harness.py``), with the CRM and HTTP session of the Twilio harness."""

from tests.twilio.harness import fixture_crm, fixture_session  # noqa: F401
from tests.vonage.harness import fixture_make_vonage_edge, fixture_vonage_edge  # noqa: F401
