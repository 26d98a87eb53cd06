"""`vidx serve`: the REST API and the web page in one long-lived process."""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated, Optional

import typer

from vidx.cli.common import DataDir, app, console, fail, settings, setup_logging


def _loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, ValueError):
        return False


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option("--host", help="Address to listen on (default $VIDX_SERVE_HOST or 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", min=1, max=65535, help="Default $VIDX_SERVE_PORT or 8000.")] = None,
    data_dir: DataDir = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the API (/api/v1, OpenAPI at /docs) and the web page (/) for this library."""
    loaded = settings(data_dir)
    host = host or loaded.serve_host
    port = port or loaded.serve_port
    if not loaded.api_token and not _loopback(host):
        fail(f"refusing to listen on {host} without VIDX_API_TOKEN: anyone who can reach it could read the library", 2)
    setup_logging(verbose)
    import uvicorn

    from vidx.server.app import create_app

    shown = f"[{host}]" if ":" in host else host
    console.print(f"vidx serve: open http://{shown}:{port}/ (API docs at /docs); data {loaded.resolved_data_dir()}")
    uvicorn.run(create_app(loaded), host=host, port=port, log_level="debug" if verbose else "warning",
                access_log=verbose, server_header=False)
