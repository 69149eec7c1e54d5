"""The ``voicemail`` setting of an agent, and whether it applies to a call.

``voicemail: {detect, action, message, inbound, detector}``: off unless
``detect``; outbound calls only unless the operator sets ``inbound`` (a
number's route, or the call's own ``agent_config``). ``action`` says what a
machine gets: ``hangup`` (the call ends ``voicemail-hangup``) or
``leave_message`` (after the beep the agent core speaks ``message``, whose
``{variables}`` are filled like the rest of the config, and ends the call:
``voicemail-message``). ``detector`` tunes the edge's own detector
(:class:`~telephony_edge.amd.detector.DetectorParams`), used where the
network has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from telephony_edge.amd.detector import DetectorParams

Action = Literal["hangup", "leave_message"]


class Voicemail(BaseModel):
    """An agent's answering-machine setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detect: bool = False
    action: Action = "hangup"
    message: str = Field(default="", max_length=4000)
    inbound: bool = False
    """Detect on inbound calls too (the operator's choice; outbound always when ``detect``)."""
    detector: DetectorParams = Field(default_factory=DetectorParams)


def voicemail_policy(agent_config: Mapping[str, Any], direction: str) -> Voicemail | None:
    """The call's setting if detection applies to it, else None.

    ``agent_config`` is the merged config (stored agent + the call's
    overrides). Raises ``pydantic.ValidationError`` (a ValueError) for a
    ``voicemail`` that is not one.
    """
    raw = agent_config.get("voicemail")
    if raw is None:
        return None
    voicemail = Voicemail.model_validate(raw)
    if not voicemail.detect or (direction != "outbound" and not voicemail.inbound):
        return None
    return voicemail
