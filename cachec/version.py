"""The installed cachec's version, in a leaf module: artifacts record it and compare it on load,
and importing it must not run the package ``__init__`` (whose lazy names reach back to artifacts)."""

__version__ = "0.1.0"
