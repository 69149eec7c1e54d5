"""The networks this edge speaks: one line per provider.

Each line names a provider class (``package.module:Class``), a subclass of
:class:`telephony_edge.provider.Provider`. Adding a network is a new package
plus one line here; nothing else in the edge names a network. The classes
are imported on first use, so that the configuration (which needs their
settings models) and the providers (which need the configuration) do not
import each other at module load.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from telephony_edge.provider import Provider

PROVIDERS: tuple[str, ...] = (
    "telephony_edge.twilio.provider:TwilioProvider",
    "telephony_edge.vonage.provider:VonageProvider",
    "telephony_edge.sip.provider:SipProvider",
    "telephony_edge.webrtc.provider:WebRtcProvider",
)


@functools.cache
def provider_classes() -> dict[str, type[Provider]]:
    """Provider name → class, in registry order."""
    from telephony_edge.provider import Provider

    classes: dict[str, type[Provider]] = {}
    for entry in PROVIDERS:
        module_name, _, class_name = entry.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(cls, type) and issubclass(cls, Provider)):
            raise TypeError(f"registry entry {entry!r} is not a Provider subclass")
        if cls.name in classes:
            raise ValueError(f"two providers are named {cls.name!r}")
        classes[cls.name] = cls
    return classes
