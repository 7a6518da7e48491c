"""Dream Forge: an API-first, programmable render fabric for text-to-image jobs."""

__version__ = "0.1.0"
