"""The server's state (one App, a long-lived read-only index, the engine) and the auth dependency."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Path, Request

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from search.engine import SearchEngine
    from store.vectors import VectorIndex
    from vidx.app import App
    from vidx.server.ingest_runner import IngestRunner

logger = logging.getLogger(__name__)

SESSION_COOKIE = "vidx_session"
# Ids live in 64-bit database integers: a larger number is a 422, not an OverflowError in the driver.
DB_INT_MAX = 2**63 - 1
MediaId = Annotated[int, Path(ge=0, le=DB_INT_MAX)]
JobId = Annotated[int, Path(ge=0, le=DB_INT_MAX)]
ClipIndex = Annotated[int, Path(ge=0, le=DB_INT_MAX)]


def session_value(token: str) -> str:
    """The cookie a token earns: derived from it (the token itself never sits in a cookie jar)."""
    return hmac.new(token.encode(), b"vidx-session-v1", hashlib.sha256).hexdigest()


@dataclass
class Metrics:
    registry: CollectorRegistry
    searches: Counter
    latency: Histogram


@dataclass
class ServerState:
    """What every request shares: opened once when the server starts."""

    vapp: App
    runner: IngestRunner
    metrics: Metrics
    _vectors: VectorIndex | None = None
    _engine: SearchEngine | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def engine(self) -> SearchEngine | None:
        """The search engine over the newest published index generation; None while nothing is indexed yet."""
        with self._lock:
            if self._engine is None:
                try:
                    self._vectors = self.vapp.vectors(read_only=True)
                except FileNotFoundError:  # no sync has published an index yet: an empty library
                    return None
                self._engine = self.vapp.engine(self._vectors)
            vectors, engine = self._vectors, self._engine
        # Cheap when nothing changed (a read of CURRENT); a new generation loads while other
        # searches go on with the old one.
        try:
            vectors.refresh()
            engine.lexical.refresh()
        except Exception:  # noqa: BLE001 - a sync mid-publish: answer from what is loaded
            logger.warning("index refresh failed; searching the loaded generation", exc_info=True)
        return engine

    def playable(self, media_ids: set[int]) -> dict[int, bool]:
        """Whether a browser plays each file as it is (else the page gets a transcoded clip)."""
        from store.queries import media_rows
        from vidx.server import playback

        return {m.id: playback.browser_playable(m) for m in media_rows(self.vapp.catalog, media_ids)}

    def close(self) -> None:
        self.runner.stop()
        with self._lock:
            if self._vectors is not None:
                self._vectors.close()
            self._vectors = self._engine = None


def get_state(request: Request) -> ServerState:
    return request.app.state.vidx


State = Annotated[ServerState, Depends(get_state)]


def require_auth(request: Request) -> None:
    """With VIDX_API_TOKEN set: a bearer token or the session cookie, compared in constant time."""
    token = get_state(request).vapp.settings.api_token
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if cookie and hmac.compare_digest(cookie.encode(), session_value(token).encode()):
        return
    raise HTTPException(401, "authentication required: send Authorization: Bearer TOKEN (VIDX_API_TOKEN)",
                        headers={"WWW-Authenticate": "Bearer"})
