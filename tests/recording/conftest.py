"""Each network's fixtures (Twilio, Vonage, SIP, WebRTC), for recorded calls over them; S3."""

from pathlib import Path

import pytest

from tests.recording.s3 import moto_bucket, moto_url  # noqa: F401
from tests.sip.conftest import sip_edge  # noqa: F401
from tests.twilio.harness import (  # noqa: F401
    fixture_crm,
    fixture_fake_twilio,
    fixture_make_twilio_edge,
    fixture_session,
)
from tests.vonage.harness import fixture_make_vonage_edge  # noqa: F401
from tests.webrtc.test_offer import edge  # noqa: F401


@pytest.fixture
def recording_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Recordings of the edges started after it go to a directory of the test's own."""
    directory = tmp_path / "recordings"
    monkeypatch.setenv("TELEPHONY_EDGE_RECORDING__DIRECTORY", str(directory))
    return directory
