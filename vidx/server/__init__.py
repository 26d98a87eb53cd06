"""`vidx serve`: the REST API (FastAPI) and the web page, one long-lived process over the same wiring as the CLI.

Modules: ``app`` (the factory, error handlers, security headers, the page), ``deps`` (the server's
state, auth), ``schemas`` (response models), ``routes_search``, ``routes_media``, ``routes_jobs``,
``routes_ops`` (health, readiness, metrics, the session cookie), ``playback`` (byte ranges, what
a browser plays, moment clips), ``ingest_runner`` (embedded ingestion in a child process).
"""
