"""The networks this edge speaks: one line per provider.

Each line names a network's settings model and its provider class
(``package.module:Class``, a subclass of :class:`telephony_edge.provider.Provider`).
Adding a network is a new package plus one line here; nothing else in the edge
names a network. The configuration needs only the settings models; a provider's
class (and with it the network's libraries: aiortc and PyAV for WebRTC, Twilio's
and Vonage's SDKs) is imported only when the network is enabled, so a worker
that serves one network does not carry the others' code (tens of MB of RSS).
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from telephony_edge.config import ProviderSettings, Settings
    from telephony_edge.provider import Provider

#: name → (its settings model, its provider class)
PROVIDERS: dict[str, tuple[str, str]] = {
    "twilio": (
        "telephony_edge.twilio.settings:TwilioSettings",
        "telephony_edge.twilio.provider:TwilioProvider",
    ),
    "vonage": (
        "telephony_edge.vonage.settings:VonageSettings",
        "telephony_edge.vonage.provider:VonageProvider",
    ),
    "sip": ("telephony_edge.sip.settings:SipSettings", "telephony_edge.sip.provider:SipProvider"),
    "webrtc": (
        "telephony_edge.webrtc.settings:WebRtcSettings",
        "telephony_edge.webrtc.provider:WebRtcProvider",
    ),
}


def _load(entry: str) -> Any:
    module_name, _, name = entry.partition(":")
    return getattr(importlib.import_module(module_name), name)


@functools.cache
def settings_models() -> dict[str, type[ProviderSettings]]:
    """Provider name → the model of its configuration section, in registry order."""
    return {name: _load(settings) for name, (settings, _) in PROVIDERS.items()}


@functools.cache
def provider_class(name: str) -> type[Provider]:
    """The provider class of ``name`` (imported now, with its network's libraries)."""
    from telephony_edge.provider import Provider

    cls = _load(PROVIDERS[name][1])
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise TypeError(f"registry entry {name!r} is not a Provider subclass")
    if cls.name != name or cls.settings_model is not settings_models()[name]:
        raise ValueError(f"registry entry {name!r} names another provider or settings model")
    return cls


def enabled_providers(settings: Settings) -> list[type[Provider]]:
    """The classes of the providers ``settings`` enables, in registry order."""
    return [
        provider_class(name)
        for name in PROVIDERS
        if (section := settings.provider_settings(name)) is not None and section.enabled
    ]
