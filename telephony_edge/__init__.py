"""telephony-edge: bridges phone and browser calls to AI voice agents."""

__version__ = "0.1.0"
