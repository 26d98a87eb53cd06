"""Property-based run of schemathesis over the OpenAPI schema of a live `vidx serve`: no 5xx, every response as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis

from test_page import serve  # the live-server harness of the browser tests

TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 50  # per operation and generation mode: the whole run stays under ~2 minutes on 2 cores
MIN_REQUESTS = 800  # about 1,300 today; far fewer means generation stopped working, not that the API is fine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cut_video: Path) -> Iterator[dict[str, object]]:
    """A real server process over a data dir with one ingested video, ingest confined to a tmp library root."""
    root = tmp_path_factory.mktemp("fuzz-library")
    data = tmp_path_factory.mktemp("fuzz-data")
    video = root / "cuts.mp4"
    video.write_bytes(cut_video.read_bytes())
    (root / "sub").mkdir()
    (root / "sub" / "outside.mp4").symlink_to(cut_video)  # inside the root by name, outside it once resolved
    env = dict(os.environ, VIDX_DATA_DIR=str(data))
    env.pop("VIDX_API_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "vidx", "ingest", str(video)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    log = data.parent / f"{data.name}-serve.log"
    with serve(data, log, VIDX_API_TOKEN=TOKEN, VIDX_LIBRARY_ROOTS=str(root)) as base:
        yield {"base": base, "root": root, "video": video, "log": log}
    # The fuzzing queues ingest batches and syncs: shutting down must not leave a child working on the library.
    assert not _processes_on(data), _processes_on(data)


def _processes_on(data: Path) -> list[str]:
    """Command lines of the processes whose environment names ``data`` as VIDX_DATA_DIR."""
    mark = f"VIDX_DATA_DIR={data}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if mark in (proc / "environ").read_bytes().split(b"\0"):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone, or not ours
            continue
    return found


def _order(label: str) -> tuple[int, str]:
    # DELETE /api/v1/media/{id} may remove the one ingested file: it runs last, so every other operation
    # fuzzes a library that has media, clips, transcript and thumbnails in it.
    return (1 if label.startswith("DELETE /api/v1/media") else 0, label)


def _ranges():  # type: ignore[no-untyped-def]
    """Range headers a browser sends, and ones it does not (past the end, reversed, suffix, garbage)."""
    from hypothesis import strategies as st

    at = st.integers(min_value=0, max_value=1 << 20)
    # Stripped: a value with leading or trailing blanks is refused by the HTTP client before it is sent.
    garbage = st.text(alphabet=[chr(c) for c in range(32, 127)], max_size=40).map(str.strip)
    return st.one_of(st.none(), st.builds("bytes={}-{}".format, at, at), st.builds("bytes={}-".format, at),
                     st.builds("bytes=-{}".format, at), garbage)


def _check_range(response) -> None:  # type: ignore[no-untyped-def]
    # The schema says nothing of a 206's bytes: they must be the ones Content-Range names.
    if response.status_code == 206:
        value = response.headers["content-range"]  # schemathesis keeps each header as a list of values
        unit, _, span = (value[0] if isinstance(value, list) else value).partition(" ")
        first, last = (int(x) for x in span.split("/")[0].split("-"))
        assert unit == "bytes" and len(response.content) == last - first + 1, response.headers


def _fuzz(strategy, ranges, base: str, session, checks: list, statuses: Counter[int]) -> None:  # type: ignore[no-untyped-def]
    """Up to MAX_EXAMPLES cases of one operation, each sent to the live server and validated against the schema."""
    from hypothesis import HealthCheck, Phase, given, settings

    @given(case=strategy, range_=ranges)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case, range_) -> None:  # type: ignore[no-untyped-def]
        headers = {**AUTH, **(case.headers or {}), **({"Range": range_} if range_ is not None else {})}
        response = case.call(base_url=base, session=session, headers=headers, timeout=120)
        statuses[response.status_code] += 1
        assert b"Traceback" not in response.content, f"{case.method} {case.formatted_path}: a traceback in the body"
        case.validate_response(response, checks=checks, headers=headers)
        _check_range(response)

    run()


def _bodies(label: str, server: dict[str, object]) -> list[dict[str, object]] | None:
    """Bodies that reach past validation: paths in, out of and around the library root; the right token."""
    root, video = Path(str(server["root"])), Path(str(server["video"]))
    if label == "POST /api/v1/ingest":
        paths = [str(video), "cuts.mp4", "./sub/../cuts.mp4", str(root), "sub", "sub/outside.mp4", "..",
                 "../../etc/passwd", "/etc/passwd", f"{root}/../{root.name}/cuts.mp4", "~", "cuts.mp4\x00", " "]
        return [{"paths": [p]} for p in paths] + [{"paths": [str(video), "/etc/passwd"]}]
    if label == "POST /api/v1/session":
        return [{"token": TOKEN}, {"token": TOKEN[:-1]}, {"token": TOKEN + " "}]
    return None


def _known_ids(session, base: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    media = session.get(f"{base}/api/v1/media", headers=AUTH).json()["items"]
    jobs = session.get(f"{base}/api/v1/jobs", headers=AUTH).json()["items"]
    assert media and media[0]["clip_count"] > 0 and jobs, (media, jobs)
    return {"media_id": media[0]["id"], "job_id": jobs[0]["id"]}


@pytest.mark.slow
def test_every_operation_answers_as_documented(server: dict[str, object]) -> None:
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    base = str(server["base"])
    session = requests.Session()
    # The schema names every route; a real ingest (the file is already indexed, so its job is skipped) shows the
    # jobs routes something to list before the fuzzing starts.
    queued = session.post(f"{base}/api/v1/ingest", json={"paths": [str(server["video"])]}, headers=AUTH)
    assert queued.status_code == 202, queued.text
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = sorted((r.ok() for r in schema.get_all_operations()), key=lambda op: _order(op.label))
    checks = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance,
              response_headers_conformance]
    known = _known_ids(session, base)
    made: dict[str, Counter[int]] = {}
    failures: list[str] = []
    for op in operations:
        fixed = {name: known[name] for name in ("media_id", "job_id") if f"{{{name}}}" in op.path}
        ranges = _ranges() if op.path.endswith(("/file", "/clip")) else st.none()
        passes = [("positive", GenerationMode.POSITIVE, None), ("negative", GenerationMode.NEGATIVE, None)]
        if fixed:  # random ids are nearly all 404s: one more pass on the media and job that exist
            passes.append((f"positive, {fixed}", GenerationMode.POSITIVE, fixed))
        bodies = _bodies(op.label, server)
        if bodies is not None:  # random bodies never name a real path or the real token
            passes.append(("positive, real bodies", GenerationMode.POSITIVE, bodies))
        for name, mode, fix in passes:
            key = f"{op.label} [{name}]"
            made[key] = statuses = Counter()
            if isinstance(fix, list):
                strategy = st.sampled_from(fix).flatmap(lambda body, op=op: op.as_strategy(body=body))
            else:
                strategy = op.as_strategy(generation_mode=mode, path_parameters=fix)
            try:
                _fuzz(strategy, ranges, base, session, checks, statuses)
            except Unsatisfiable:
                if mode is not GenerationMode.NEGATIVE:
                    failures.append(f"{key}: no case could be generated")
                # else: nothing in the request to make invalid (no parameters, no body)
            except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - collect every failure, report them all
                failures.append(f"{key}: {type(e).__name__}: {str(e)[:1500]}")

    total = sum(sum(c.values()) for c in made.values())
    print(f"\nschemathesis: {total} requests over {len(operations)} operations")
    for key, statuses in made.items():
        print(f"  {sum(statuses.values()):4d}  {key}  {dict(sorted(statuses.items()))}")
    log = Path(str(server["log"])).read_text()
    assert not failures, "\n\n".join(failures)
    assert "Traceback" not in log, log[-4000:]
    assert total >= MIN_REQUESTS, made
