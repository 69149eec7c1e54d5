"""Phone number → agent, region and provider; region → public URL, SIP host, agent cores."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from telephony_edge.config import Region, Settings
from telephony_edge.config_values import normalize_e164, normalize_network_number


@dataclass(frozen=True, slots=True)
class Route:
    """Where a dialled number goes."""

    number: str
    provider: str
    agent_id: str
    region_name: str
    region: Region
    agent_config: dict[str, Any] = field(default_factory=dict)
    local: bool = True  # homed in this worker's region


class NumberRouter:
    """Looks up dialled numbers in the regional number configuration."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._local_region = settings.server.region
        self._core_cycles = {
            name: itertools.cycle(region.agent_core_urls)
            for name, region in settings.regions.items()
            if region.agent_core_urls
        }

    def lookup(self, dialled: str) -> Route | None:
        """The route for ``dialled`` as a network sends it (``+`` optional), or None."""
        try:
            number = normalize_network_number(dialled)
        except ValueError:
            return None
        entry = self._settings.numbers.get(number)
        if entry is None:
            return None
        local = self._local_region is None or entry.region == self._local_region
        return Route(
            number=number,
            provider=entry.provider,
            agent_id=entry.agent_id,
            region_name=entry.region,
            region=self._settings.regions[entry.region],
            agent_config=entry.agent_config.model_dump(mode="json", exclude_unset=True),
            local=local,
        )

    def agent_core_url(self, region_name: str | None) -> str | None:
        """Next agent-core URL for a region (round robin), the global one, or None (built-in)."""
        if region_name is not None and region_name in self._core_cycles:
            return next(self._core_cycles[region_name])
        return self._settings.agent_core.url


def normalize_destination(destination: str) -> str:
    """A transfer target as ``<Dial>`` takes it: E.164 number or ``sip:``/``sips:`` URI.

    Raises ValueError for anything else, so an agent's typo never reaches Twilio.
    """
    target = destination.strip()
    if target.lower().startswith(("sip:", "sips:")):
        if "@" not in target or any(c in target for c in " <>\"'"):
            raise ValueError(f"{destination!r} is not a SIP URI (sip:user@host)")
        return target
    return normalize_e164(target)
