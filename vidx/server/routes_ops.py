"""Health, readiness, Prometheus metrics, and the session cookie the page uses for <video> and <img>."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from vidx.server.deps import SESSION_COOKIE, State, require_auth, session_value
from vidx.server.schemas import Error, SessionRequest, SessionState

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Error}})
def readyz(state: State) -> JSONResponse:
    """The catalog answers and the search index opens."""
    from store.queries import count_media

    try:
        media = count_media(state.vapp.catalog)
        state.engine()
    except Exception as e:  # noqa: BLE001 - any failure here means "not ready", said in one line
        return JSONResponse({"error": f"not ready: {type(e).__name__}"}, status_code=503)
    return JSONResponse({"status": "ready", "media": media})


@router.get("/metrics", dependencies=[Depends(require_auth)], response_class=Response)
def metrics(state: State) -> Response:
    """Prometheus text: search latency histogram, searches by outcome, jobs by state."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def jobs_collector(state_getter):  # type: ignore[no-untyped-def]
    """A collector that counts job rows by kind and state at each scrape (the catalog is the truth)."""
    from prometheus_client.core import GaugeMetricFamily

    class _Jobs:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            from indexer.jobs import count_by_state

            family = GaugeMetricFamily("vidx_jobs", "Jobs in the catalog by kind and state", labels=["kind", "state"])
            for (kind, job_state), n in sorted(count_by_state(state_getter().vapp.catalog).items()):
                family.add_metric([kind, job_state], n)
            yield family

    return _Jobs()


@router.get("/api/v1/session", response_model=SessionState)
def session_state(state: State, request: Request) -> SessionState:
    token = state.vapp.settings.api_token
    if not token:
        return SessionState(auth_required=False, authenticated=True)
    try:
        require_auth(request)
    except HTTPException:
        return SessionState(auth_required=True, authenticated=False)
    return SessionState(auth_required=True, authenticated=True)


@router.post("/api/v1/session", status_code=204, responses={400: {"model": Error}, 401: {"model": Error}})
def open_session(state: State, body: SessionRequest, request: Request) -> Response:
    """Trade the token for an HttpOnly, SameSite=Strict cookie: the page's <video> and <img> cannot send a header."""
    token = state.vapp.settings.api_token
    if not token:
        return Response(status_code=204)
    if not hmac.compare_digest(body.token.encode(), token.encode()):
        raise HTTPException(401, "wrong token")
    response = Response(status_code=204)
    response.set_cookie(SESSION_COOKIE, session_value(token), httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https", max_age=30 * 24 * 3600)
    return response


@router.delete("/api/v1/session", status_code=204)
def close_session() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
