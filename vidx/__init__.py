"""vidx: video search and indexing engine (front door: settings, CLI, wiring)."""

__version__ = "0.1.0"
