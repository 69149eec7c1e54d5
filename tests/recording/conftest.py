"""The networks' fixtures (Twilio's harness, the SIP edge), for recorded calls over them."""

from tests.sip.conftest import sip_edge  # noqa: F401
from tests.twilio.harness import (  # noqa: F401
    fixture_crm,
    fixture_fake_twilio,
    fixture_make_twilio_edge,
    fixture_session,
)
