"""Call recording: a time-aligned WAV written while the call runs, stored and signed after it."""
