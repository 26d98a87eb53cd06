"""vidx: video search and indexing engine; this package is the front door.

settings (``Settings``: every ``VIDX_`` setting), app (``deployment()``, the one Settings -> Deployment
translation, and ``App``: sync, search engine, query encoder, rerank, training, model switch, describe),
cli/ (the ``vidx`` command: common, ingest, library, models), __main__ (``python -m vidx``).
"""

__version__ = "0.1.0"
