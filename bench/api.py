"""Search over HTTP (`vidx serve`) on bench/search.py's synthetic libraries, beside the engine in-process and a cold `vidx search`.

    .venv/bin/python bench/api.py --sizes 10000,100000 --keep /tmp/vidx-api-bench

For each size, in one run: the engine's own latency (bench/search.py's `measure`: `SearchEngine.search`
in a process of its own, pinned to the server's core), a cold `vidx search` process (wall and peak
RSS, unpinned, as a user runs it), then `vidx serve` pinned to one core (`--server-cpu`, default 1)
loaded by `wrk` pinned to the other (`--client-cpu`, default 0): one connection per client, 1, 4
and 16 clients, each request a query picked at random from the list (2-6 word phrases cut from the
transcripts, as bench/search.py), with the bearer token. Reported per level: HTTP latency p50/p95
(wrk's histogram), searches per second, errors (socket errors and non-200 answers), and the
engine's share as the server itself measured it (`took_ms` of each answer), and the CPU used by the
server, by wrk and by everything else on the machine during the run (from /proc: a busy shared
machine shows up there). Then the server's peak RSS (VmHWM). Prints one JSON line per measurement
and a Markdown table. `--server-cpu 0,1` lets the server use both cores (wrk then shares one).
Needs `wrk` (`apt-get install wrk`) and `taskset`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TOKEN = "bench-api-token-0123456789"
MARKER = "api-bench-built.json"

# One wrk thread; per request a random query path from the file named by the first script argument.
# `response` keeps each answer's took_ms (the server's own timing) and counts the non-200s.
WRK_LUA = r"""
local paths = {}
tooks, non200 = "", 0
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  math.randomseed(tonumber(args[2]) or 0)
end
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
response = function(status, headers, body)
  if status ~= 200 then non200 = non200 + 1; return end
  local t = body:match('"took_ms":%s*([%d%.eE+-]+)')
  if t then tooks = tooks .. t .. "," end
end
local threads = {}
setup = function(thread) threads[#threads + 1] = thread end
done = function(summary, latency, requests)
  local tk, bad = {}, 0
  for _, t in ipairs(threads) do
    tk[#tk + 1] = t:get("tooks")
    bad = bad + t:get("non200")
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"non200": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, "took_ms": [%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, bad,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    (table.concat(tk)):gsub(",$", "")))
end
"""


def _pct(xs: list[float], p: float) -> float:
    import numpy as np

    return round(float(np.percentile(np.asarray(xs), p)), 2) if xs else float("nan")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def library(size: int, keep: Path | None, stack: contextlib.ExitStack) -> Path:
    """A synced synthetic library of ``size`` clips (bench/startup.py's builder, in a child so this process stays small)."""
    if keep is None:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"vidx-api-bench-{size}-")))
    else:
        data = keep / str(size)
        if (data / MARKER).is_file():
            print(f"# reusing the {size:,}-clip library in {data}", file=sys.stderr)
            return data
        if data.exists():
            shutil.rmtree(data)  # a build that did not finish
        data.mkdir(parents=True)
    t0 = time.perf_counter()
    code = f"from pathlib import Path; from bench.startup import build_library; build_library(Path({str(data)!r}), {size})"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    (data / MARKER).write_text(json.dumps({"build_s": round(time.perf_counter() - t0, 1)}))
    return data


def engine_latency(data: Path, queries: list[str], cpu: str, env: dict[str, str]) -> dict[str, object]:
    """bench/search.py's in-process measurement of `SearchEngine.search`, pinned to the server's core."""
    code = ("import json, sys; from pathlib import Path; from bench.search import measure; "
            "print(json.dumps(measure(Path(sys.argv[1]), json.loads(sys.argv[2]))))")
    proc = subprocess.run(["taskset", "-c", cpu, sys.executable, "-c", code, str(data), json.dumps(queries)],
                          cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cold_search(data: Path, queries: list[str], runs: int, env: dict[str, str]) -> dict[str, object]:
    """`vidx search Q` in a fresh process, ``runs`` times (bench/startup.py's timer: wall and peak RSS)."""
    from bench.startup import run_once

    samples = [run_once([sys.executable, "-m", "vidx", "search", q, "--limit", "10"], dict(env, VIDX_DATA_DIR=str(data)), REPO)
               for q in queries[:runs]]
    return {"cold_search_s": round(statistics.median(s[0] for s in samples), 2),
            "cold_search_rss_mib": round(max(s[1] for s in samples), 1), "cold_runs": len(samples)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status
    except OSError:
        return 0


@contextlib.contextmanager
def server(data: Path, cpu: str, env: dict[str, str], log: Path) -> Iterator[tuple[int, int]]:
    """`vidx serve` pinned to ``cpu``; yields (pid, port) once /readyz answers 200."""
    port = _free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-m", "vidx", "serve", "--port", str(port)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(env, VIDX_DATA_DIR=str(data), VIDX_API_TOKEN=TOKEN))
        try:
            deadline = time.monotonic() + 300
            while _get(f"http://127.0.0.1:{port}/readyz") != 200:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"vidx serve did not become ready: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            yield proc.pid, port
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise ValueError(f"expected VmHWM in /proc/{pid}/status")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all processes, all cores) since boot."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(port: int, pid: int, paths: Path, script: Path, clients: int, seconds: int, cpu: str, seed: int) -> dict[str, object]:
    """One wrk run at ``clients`` connections: latency in ms, searches/s, errors, the server's took_ms, CPU of both sides."""
    load_before, server_cpu, wrk_cpu, busy = _load(), _cpu_seconds(pid), _children_cpu_seconds(), _busy_cpu_seconds()
    argv = ["taskset", "-c", cpu, "wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s",
            "-H", f"Authorization: Bearer {TOKEN}", "-s", str(script), f"http://127.0.0.1:{port}/", "--",
            str(paths), str(seed)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    server_cpu, wrk_cpu = _cpu_seconds(pid) - server_cpu, _children_cpu_seconds() - wrk_cpu
    others_cpu = _busy_cpu_seconds() - busy - server_cpu - wrk_cpu  # the rest of the machine: other people's work
    raw = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    took = [float(x) for x in raw["took_ms"]]
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"] + raw["non200"]
    return {
        "clients": clients, "requests": raw["requests"], "seconds": round(raw["duration_us"] / 1e6, 1),
        "http_p50_ms": round(raw["p50_us"] / 1000, 2), "http_p95_ms": round(raw["p95_us"] / 1000, 2),
        "http_p99_ms": round(raw["p99_us"] / 1000, 2), "http_max_ms": round(raw["max_us"] / 1000, 2),
        "searches_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "took_p50_ms": _pct(took, 50), "took_p95_ms": _pct(took, 95),
        "errors": errors, "error_detail": {k: raw[k] for k in ("connect", "read", "write", "timeout", "non200")},
        "server_cpu_pct": round(100 * server_cpu / (raw["duration_us"] / 1e6)),
        "wrk_cpu_pct": round(100 * wrk_cpu / (raw["duration_us"] / 1e6)),
        "others_cpu_pct": round(100 * others_cpu / (raw["duration_us"] / 1e6)),
        "load_before": load_before, "load_after": _load(),
    }


def measure_size(size: int, args: argparse.Namespace, queries: list[str], work: Path,
                 stack: contextlib.ExitStack) -> list[dict[str, object]]:
    """Engine in-process, cold `vidx search`, then the server under 1, 4 and 16 clients, on one library."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")  # as bench/search.py: idle threads must not spin on the shared core
    env.pop("VIDX_API_TOKEN", None)
    data = library(size, args.keep, stack)
    rows: list[dict[str, object]] = []
    engine = engine_latency(data, queries, args.server_cpu, env)
    base = {"clips": size, "engine_p50_ms": engine["hybrid_p50_ms"], "engine_p95_ms": engine["hybrid_p95_ms"],
            "engine_stage_p50_ms": engine["stage_p50_ms"], **cold_search(data, queries, args.cold_runs, env)}
    print(json.dumps({"kind": "engine+cold", **base}), flush=True)
    paths = work / "paths.txt"
    paths.write_text("".join(f"/api/v1/search?q={quote(q)}&limit=10\n" for q in queries))
    script = work / "search.lua"
    script.write_text(WRK_LUA)
    with server(data, args.server_cpu, env, work / f"serve-{size}.log") as (pid, port):
        wrk(port, pid, paths, script, 1, args.warmup, args.client_cpu, args.seed)  # page cache, first-touch of the indexes
        for clients in args.clients:
            row = {**base, "server_cpus": args.server_cpu,
                   **wrk(port, pid, paths, script, clients, args.seconds, args.client_cpu, args.seed)}
            row["http_minus_engine_p50_ms"] = round(row["http_p50_ms"] - row["engine_p50_ms"], 2)
            row["http_minus_took_p50_ms"] = round(row["http_p50_ms"] - row["took_p50_ms"], 2)
            row["server_peak_rss_mib"] = peak_rss_mib(pid)
            print(json.dumps({"kind": "http", **{k: v for k, v in row.items() if k != "engine_stage_p50_ms"}}), flush=True)
            rows.append(row)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    head = ("| clips | server CPUs | clients | HTTP p50 | HTTP p95 | searches/s | errors | server took_ms p50 "
            "| engine in-process p50 / p95 | HTTP - engine p50 | HTTP - took_ms p50 | CPU server / wrk / others "
            "| cold `vidx search` | server peak RSS |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        # Past one client the difference is queueing behind the other requests, not HTTP.
        extra = (f"{r['http_minus_engine_p50_ms']:+} ms | {r['http_minus_took_p50_ms']:+} ms" if r["clients"] == 1
                 else "- | -")
        lines.append(
            f"| {r['clips']:,} | {r['server_cpus']} | {r['clients']} | {r['http_p50_ms']} ms | {r['http_p95_ms']} ms "
            f"| {r['searches_per_s']} | {r['errors']} / {r['requests']} | {r['took_p50_ms']} ms "
            f"| {r['engine_p50_ms']} / {r['engine_p95_ms']} ms | {extra} "
            f"| {r['server_cpu_pct']} / {r['wrk_cpu_pct']} / {r['others_cpu_pct']} % "
            f"| {r['cold_search_s']} s, {r['cold_search_rss_mib']:.0f} MiB | {r['server_peak_rss_mib']:,.0f} MiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=int, default=20, help="Length of each wrk run.")
    parser.add_argument("--warmup", type=int, default=5, help="Seconds of one-client load before the first measurement.")
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--server-cpu", default="1", help="taskset CPU list of the server (and the in-process engine).")
    parser.add_argument("--client-cpu", default="0", help="taskset CPU list of wrk.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None,
                        help="build each size under KEEP/<size> and keep it; a size already built there is reused")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/api.py needs {tool} on PATH (Debian: apt-get install {'wrk' if tool == 'wrk' else 'util-linux'})")
    from bench.search import cut_queries, sentences

    queries = cut_queries(sentences(), args.queries, args.seed)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    print(f"# {platform.node()}: {os.cpu_count()} CPUs ({cpu}), python {platform.python_version()}, load {_load()}; "
          f"server on CPU {args.server_cpu}, wrk on CPU {args.client_cpu}", file=sys.stderr)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="vidx-api-bench-") as tmp, contextlib.ExitStack() as stack:
        for size in (int(s) for s in args.sizes.split(",")):
            rows += measure_size(size, args, queries, Path(tmp), stack)
    print(table(rows))


if __name__ == "__main__":
    main()
