"""Publication benchmark (issue 7): a published release's GET over HTTP, 200 with ETag and 304.

    python -m bench.publication            # 3 rounds of 5 s per measure and server
    python -m bench.publication --quick    # 1 round of 1 s: a smoke run
    python -m bench.publication --client python   # force the Python load generator

Two servers, each a uvicorn process pinned to the same single core (``os.sched_setaffinity``),
run one after the other with the same uvicorn configuration (uvloop + httptools when installed,
no access log, keep-alive):

* the real publication app (embedded: SQLite, in-process bus) holding one published release of
  34 provinces, full middleware stack (correlation id, metrics, request-size cap, rate limiting;
  the anonymous limit is raised so the load generator is never refused);
* the baseline: a raw ASGI app serving the same bytes with the same headers (and 304 on a
  matching tag).

Both are driven by the same load generator from another process on the other core(s): ``wrk``
(Debian package ``wrk``) when it is on the PATH, else a Python asyncio raw-socket keep-alive
client (slower than wrk, so on a fresh machine both servers may be limited by the client and the
ratio reads high; the report says which client ran). Measures, for
``GET /v1/public/releases/{id}`` answered 200 with its body and strong ETag, and the same GET with
``If-None-Match`` answered 304: requests/second and p99 latency with CONCURRENCY keep-alive
connections. Rounds alternate publication/raw so a busy machine slows both alike; the median
round is reported. Targets: ≥ 0.35 of the raw app for 200, ≥ 0.6 for 304.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import Result, parser, report

CONCURRENCY = 16
PROVINCES = [f"{i:02d}" for i in range(1, 35)]


def _export(wave_id: str, run_id: str) -> dict:
    def cell(domain, code_, indicator, code, value, n=400):
        return {"domain": domain, "domain_code": code_, "indicator": indicator, "code": code, "weighting": "none",
                "value": value, "se": 0.8, "ci_low": value - 1.57, "ci_high": value + 1.57, "n": n, "cv": 0.01,
                "deff": 1.2, "flag": "ok"}

    cells = [cell("nation", "VN", "sipas", "sipas", 80.1, 13600), cell("nation", "VN", "part", "policy", 79.0),
             cell("nation", "VN", "part", "service", 81.0)]
    cells += [cell("nation", "VN", "element", f"E{e}", 75.0 + e) for e in range(1, 9)]
    for i, p in enumerate(PROVINCES):
        cells.append(cell("province", p, "sipas", "sipas", 70 + i * 0.5))
        cells += [cell("province", p, "element", f"E{e}", 70 + e) for e in range(1, 9)]
        cells += [cell("province", p, "item", f"E{e}.{k}", 70 + k) for e in range(1, 9) for k in range(1, 4)]
    ranks = [{"province_code": p, "indicator": "sipas", "value": 70 + i * 0.5, "rank": 34 - i, "previous_rank": None,
              "rank_change": None, "previous_value": None, "comparable": True, "comparability_note": None}
             for i, p in enumerate(PROVINCES)]
    return {"run": {"run_id": run_id, "wave_id": wave_id, "kind": "final", "methodology_version": "sipas-2023",
                    "accepted_fingerprint": "bench", "accepted_forms": 13600, "code_version": "bench",
                    "completed_at": "2026-11-01T00:00:00Z"}, "cells": cells, "rankings": ranks}


async def _published_app(tmp: Path):
    """The publication app alone, with one published release; returns (app, path, exit stack)."""
    import contextlib

    from services.embedded import embedded_stack
    from services.publication import service
    from services.publication.schemas import ReleaseCreate, RunExport
    from shared.auth import Principal, Role
    from shared.contracts.indexing import IndexRunCompleted
    from shared.contracts.sampling import WaveCreated
    from shared.db import transaction
    from shared.events import make_event
    from shared.settings import PlatformSettings
    from shared.waves import wave_replica_effect

    stack = contextlib.AsyncExitStack()
    platform = PlatformSettings(environment="test", data_dir=tmp, log_json=False)
    s = await stack.enter_async_context(embedded_stack(platform, services=["publication"]))
    app = s.apps["publication"]
    app.state.settings.anonymous_rate_per_minute = 10**9
    app.state.settings.anonymous_burst = 10**9
    tables = app.state.tables
    wave_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())
    wave = WaveCreated(wave_id=uuid.UUID(wave_id), code="SIPAS-2026", name="SIPAS 2026", scope="national",
                       province_code=None, year=2026, methodology_version="sipas-2023",
                       fieldwork_start=dt.date(2026, 8, 1), fieldwork_end=dt.date(2026, 10, 31), status="closed")
    run = IndexRunCompleted(run_id=uuid.UUID(run_id), wave_id=uuid.UUID(wave_id), kind="final",
                            methodology_version="sipas-2023", accepted_fingerprint="bench", accepted_forms=13600,
                            code_version="bench", completed_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), national_sipas=80.1)
    ministry = Principal("bench", Role.ministry, "bench")
    export = RunExport.model_validate(_export(wave_id, run_id))
    async with transaction(app.state.sessions) as session:
        await wave_replica_effect(tables["wave"])(session, wave, make_event(wave))
        await service.record_run(session, tables["index_run"], run)
        release_id = await service.create_release(session, tables, ministry, ReleaseCreate(run_id=run_id), export)
        await service.approve(session, tables, ministry, release_id, 1)
        await service.release_version(session, tables, ministry, release_id, 1, None)
    return app, f"/v1/public/releases/{release_id}", stack


# --- the two servers (child processes) ---


def _raw_app(body: bytes, etag: str, cache_control: str):
    """The baseline: bare ASGI, same bytes and headers, 304 on a matching tag."""
    headers = [(b"content-type", b"application/json"), (b"etag", etag.encode()),
               (b"cache-control", cache_control.encode()), (b"vary", b"Accept")]
    full = headers + [(b"content-length", str(len(body)).encode())]

    async def app(scope, receive, send):
        for name, value in scope["headers"]:
            if name == b"if-none-match" and value.decode() == etag:
                await send({"type": "http.response.start", "status": 304, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
        await send({"type": "http.response.start", "status": 200, "headers": full})
        await send({"type": "http.response.body", "body": body})

    return app


def _uvicorn(app, port: int):
    """One configuration for both servers, so only the application differs."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", access_log=False, log_level="warning",
                            loop="auto", http="auto", backlog=256)
    return uvicorn.Server(config)


async def _serve_until_stopped(server, ready: Path, info: dict) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("the server did not start")
        await asyncio.sleep(0.01)
    ready.write_text(json.dumps(info))
    await task


def _serve(kind: str, port: int, cpu: int, ready: Path, spec: Path | None) -> int:
    """Child process: one server pinned to one core, until SIGTERM (uvicorn's graceful exit)."""
    import logging

    logging.disable(logging.WARNING)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})

    async def publication() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            app, path, stack = await _published_app(Path(tmp))
            try:
                await _serve_until_stopped(_uvicorn(app, port), ready, {"path": path})
            finally:
                await stack.aclose()

    async def raw() -> None:
        s = json.loads(spec.read_text())
        app = _raw_app(bytes.fromhex(s["body"]), s["etag"], s["cache_control"])
        await _serve_until_stopped(_uvicorn(app, port), ready, {"path": s["path"]})

    try:  # the event loop uvicorn.run picks in production (``services serve``): uvloop if installed
        import uvloop
    except ImportError:
        asyncio.run(publication() if kind == "publication" else raw())
    else:
        uvloop.run(publication() if kind == "publication" else raw())
    return 0


class _Server:
    """A server child process (``python -m bench.publication --serve KIND``)."""

    def __init__(self, kind: str, cpu: int, tmp: Path, spec: Path | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        ready = tmp / f"{kind}.ready"
        cmd = [sys.executable, "-m", "bench.publication", "--serve", kind, "--port", str(self.port),
               "--cpu", str(cpu), "--ready", str(ready)] + (["--spec", str(spec)] if spec else [])
        self.proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the {kind} server did not start")
            time.sleep(0.05)
        time.sleep(0.05)  # the file is written in one call, but let it be complete
        self.path = json.loads(ready.read_text())["path"]
        self.url = f"http://127.0.0.1:{self.port}{self.path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the load generators (this process, on the other cores) ---


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 GET (no client library: the same bytes wrk and the fallback send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(_request(path, headers or {}))
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(hdrs.get("content-length", "0"))
        while len(rest) < length:
            rest += s.recv(65536)
        return status, hdrs, rest[:length]


def _request(path: str, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def _wrk(url: str, headers: dict[str, str], seconds: float, cpus: set[int]) -> tuple[float, float, int]:
    """(requests/s, p99 ms, requests) from wrk --latency, one thread, CONCURRENCY connections."""
    cmd = ["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{max(1, round(seconds))}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60,
                         preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    text = out.stdout
    if out.returncode != 0 or "Non-2xx or 3xx" in text or "Socket errors" in text:
        raise RuntimeError(f"wrk failed or got errors:\n{text}\n{out.stderr}")
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", text).group(1))
    value, unit = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
    requests = int(re.search(r"^\s*(\d+) requests in", text, re.M).group(1))
    return rps, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], requests


async def _python_load(port: int, path: str, headers: dict[str, str], seconds: float, expect: int) -> tuple[float, float, int]:
    """(requests/s, p99 ms, requests): CONCURRENCY keep-alive connections on raw sockets (asyncio)."""
    request = _request(path, headers)
    expect_line = f"HTTP/1.1 {expect} ".encode()
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < end:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(expect_line):
                    raise RuntimeError(f"unexpected answer {head[:40]!r}")
                i = head.lower().find(b"content-length:")
                if i >= 0:
                    await reader.readexactly(int(head[i + 15:head.index(b"\r\n", i)]))
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONCURRENCY)))
    took = time.perf_counter() - started
    return len(latencies) / took, statistics.quantiles(latencies, n=100)[98] * 1000, len(latencies)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc), to normalise by what it got."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(client: str, server: "_Server", headers: dict[str, str], seconds: float, cpus: set[int],
          expect: int) -> tuple[float, float, float]:
    """(requests/s, p99 ms, requests per CPU-second of the server) of one run."""
    cpu = _cpu_seconds(server.proc.pid)
    if client == "wrk":
        rps, p99, n = _wrk(f"http://127.0.0.1:{server.port}{server.path}", headers, seconds, cpus)
    else:
        rps, p99, n = asyncio.run(_python_load(server.port, server.path, headers, seconds, expect))
    used = _cpu_seconds(server.proc.pid) - cpu
    return rps, p99, n / used if used > 0 else float("nan")


# --- the measurement ---


def _cores() -> tuple[int, set[int]]:
    """The server's core (the last one we may use) and the load generator's (the others)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    server = allowed[-1]
    return server, set(allowed[:-1]) or {server}


def _run(seconds: float, rounds: int, client: str) -> list[Result]:
    server_cpu, client_cpus = _cores()
    if client == "python" and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, client_cpus)  # the Python generator runs in this process
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        servers: list[_Server] = []
        try:
            pub = _Server("publication", server_cpu, tmp)
            servers.append(pub)
            status, headers, body = _get(pub.port, pub.path)
            assert status == 200 and "etag" in headers, (status, body[:200])
            spec = tmp / "raw.json"
            spec.write_text(json.dumps({"path": pub.path, "body": body.hex(), "etag": headers["etag"],
                                        "cache_control": headers["cache-control"]}))
            raw = _Server("raw", server_cpu, tmp, spec)
            servers.append(raw)
            etag = headers["etag"]
            status, raw_headers, raw_body = _get(raw.port, raw.path)
            assert status == 200 and raw_body == body and raw_headers["etag"] == etag
            for server in (pub, raw):
                assert _get(server.port, server.path, {"If-None-Match": etag})[0] == 304

            results = []
            for label, hdrs, expect, target in (("200 with ETag", {}, 200, 0.35),
                                                ("304 Not Modified", {"If-None-Match": etag}, 304, 0.6)):
                measured: dict[str, list[tuple[float, float]]] = {"publication": [], "raw": []}
                for server in (pub, raw):  # warm up (imports, caches, uvloop) before timing
                    _load(client, server, hdrs, min(1.0, seconds), client_cpus, expect)
                for _ in range(rounds):
                    for name, server in (("publication", pub), ("raw", raw)):
                        measured[name].append(_load(client, server, hdrs, seconds, client_cpus, expect))
                rps = statistics.median(m[0] for m in measured["publication"])
                raw_rps = statistics.median(m[0] for m in measured["raw"])
                p99 = statistics.median(m[1] for m in measured["publication"])
                raw_p99 = statistics.median(m[1] for m in measured["raw"])
                per_cpu = statistics.median(m[2] for m in measured["publication"])
                raw_per_cpu = statistics.median(m[2] for m in measured["raw"])
                note = (f"HTTP/1.1 keep-alive, {CONCURRENCY} connections, load by {client}; server on core {server_cpu}, "
                        f"client on {sorted(client_cpus)}; body {len(body):,} bytes; median of {rounds} x {seconds:g} s")
                extra = {"client": client, "rounds": measured}
                results.append(Result(f"published release GET, {label}: requests/s", rps, "req/s", raw_rps,
                                      "raw ASGI app on uvicorn, same bytes", target=f">= {target} of raw", note=note,
                                      extra=extra))
                results.append(Result(f"published release GET, {label}: requests per server CPU-second", per_cpu,
                                      "req/s", raw_per_cpu, "raw ASGI app on uvicorn, same bytes",
                                      target=f">= {target} of raw",
                                      note="requests / CPU time the server process used (/proc): what one whole "
                                           "core would serve; steadier than wall-clock req/s on a busy machine"))
                results.append(Result(f"published release GET, {label}: p99 latency", p99, "ms", raw_p99,
                                      "raw ASGI app on uvicorn, same bytes", higher_is_better=False,
                                      note=f"under the same load ({CONCURRENCY} connections)"))
            return results
        finally:
            for server in reversed(servers):
                server.stop()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                   help="load generator: wrk when installed (auto), or the Python fallback")
    p.add_argument("--serve", choices=("publication", "raw"), help=argparse_hidden())
    p.add_argument("--port", type=int, help=argparse_hidden())
    p.add_argument("--cpu", type=int, default=0, help=argparse_hidden())
    p.add_argument("--ready", type=Path, help=argparse_hidden())
    p.add_argument("--spec", type=Path, help=argparse_hidden())
    args = p.parse_args(argv)
    if args.serve:
        return _serve(args.serve, args.port, args.cpu, args.ready, args.spec)
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    seconds, rounds = (1.0, 1) if args.quick else (5.0, 3)
    results = _run(seconds, rounds, client)
    report(f"Publication: a published release's GET over HTTP (uvicorn on one core, load by {client})",
           results, args.json)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
