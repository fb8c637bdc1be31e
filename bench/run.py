"""`make bench`: the gateway's overhead over a direct call to a fast mock upstream, next to a bare forwarder.

Layout on a 2-core machine: the gateway (and, in turn, the bare forwarder) pinned to core 0; the mock upstream, the
load generator and the OTLP sink on core 1. Prints, for the direct path, the bare forwarder and the gateway: CPU per
request and per 20-chunk stream, added latency at concurrency 1, requests/s at concurrency 64, streaming
time-to-first-chunk overhead and RSS, with issue 8's targets and the peers' figures. See bench/README.md.

Environment: BENCH_PROFILE (embedded | production), BENCH_TRACE (off | a sampling ratio such as 1 or 0.01),
BENCH_SCALE (default 1.0), BENCH_LIMITS (0: no limits/budget), BENCH_REDIS (empty: in-process state), BENCH_PG,
BENCH_CACHE (1: response cache on, every request a miss), BENCH_FORWARDER (0: skip the bare forwarder; redis,
in the production profile: a second forwarder, fwd+redis, makes one Redis round trip per request), BENCH_PHASES (a
subset of c1,c64,ttfc,streams; default all), BENCH_BASELINE / BENCH_BASELINE_PYTHON (a second gateway: another
checkout's src, another interpreter).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.backends import flush_redis, fresh_postgres
from bench.load import Result, run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ADMIN = "bench-admin-key-0123456789"
CLK = os.sysconf("SC_CLK_TCK")
PROFILES = ("embedded", "production")
PHASES = ("c1", "c64", "ttfc", "streams")


def _phases(value: str) -> frozenset[str]:
    chosen = frozenset(p.strip() for p in value.split(",") if p.strip())
    if not chosen or not chosen <= set(PHASES):
        raise SystemExit(f"BENCH_PHASES={value!r}: a comma-separated subset of {', '.join(PHASES)}")
    return chosen


def _baseline(value: str) -> str:
    if value and not (Path(value) / "aigw" / "__init__.py").is_file():
        raise SystemExit(
            f"BENCH_BASELINE={value!r}: a source directory holding the aigw package (another checkout's src)"
        )
    return str(Path(value).resolve()) if value else ""


def _forwarder_redis(value: str, prod: bool) -> bool:
    if value == "redis" and not prod:
        raise SystemExit("BENCH_FORWARDER=redis: the production profile only (the embedded one has no Redis)")
    return value == "redis"


def _interpreter(value: str) -> str:
    if value and not os.access(value, os.X_OK):
        raise SystemExit(f"BENCH_BASELINE_PYTHON={value!r}: an executable Python interpreter with aigw installed")
    return value


DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"


@dataclass(frozen=True)
class Options:
    profile: str  # embedded: SQLite + in-process state; production: PostgreSQL + Redis + response cache + tracing
    trace: str  # "off" or the sampling ratio given to OTEL_TRACES_SAMPLER_ARG
    scale: float
    limits: bool  # RPM/TPM limits and a monthly budget on the bench tenant (never reached)
    redis_url: str  # "" = in-process state
    pg_url: str  # "" = SQLite; else the server on which a fresh database is made
    cache: bool  # response cache on, every request a miss (lookup + store)
    forwarder: bool  # also measure the bare forwarder
    forwarder_redis: bool = False  # also a second forwarder making one Redis round trip per request (fwd+redis)
    phases: frozenset[str] = frozenset(PHASES)  # which measurements to take (all by default)
    # Another checkout's src/ (e.g. a git worktree of the last commit): a second gateway from that code, measured
    # in the same run, interleaved with this one: an A/B on the same minutes of the VM.
    baseline: str = ""
    # Another interpreter (a venv's python with aigw installed) for the baseline gateway: an A/B of Python versions.
    # Alone, the baseline runs this checkout's code under it.
    baseline_python: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Options:
        profile = environ.get("BENCH_PROFILE", "embedded")
        if profile not in PROFILES:
            raise SystemExit(f"BENCH_PROFILE={profile!r}: use one of {', '.join(PROFILES)}")
        prod = profile == "production"
        trace = environ.get("BENCH_TRACE", "0.01" if prod else "off").strip().lower()
        if trace != "off":
            try:
                ok = 0.0 < float(trace) <= 1.0
            except ValueError:
                ok = False
            if not ok:
                raise SystemExit(f"BENCH_TRACE={trace!r}: use off or a sampling ratio in (0, 1], e.g. 1 or 0.01")
        return cls(
            profile=profile,
            trace=trace,
            scale=float(environ.get("BENCH_SCALE", "1.0")),
            limits=environ.get("BENCH_LIMITS", "1") != "0",
            redis_url=environ.get("BENCH_REDIS", DEFAULT_REDIS if prod else ""),
            pg_url=environ.get("BENCH_PG", DEFAULT_PG) if prod else "",
            cache=environ.get("BENCH_CACHE", "1" if prod else "0") != "0",
            forwarder=environ.get("BENCH_FORWARDER", "1") != "0",
            forwarder_redis=_forwarder_redis(environ.get("BENCH_FORWARDER", "1"), prod),
            phases=_phases(environ.get("BENCH_PHASES", ",".join(PHASES))),
            baseline=_baseline(environ.get("BENCH_BASELINE", "")),
            baseline_python=_interpreter(environ.get("BENCH_BASELINE_PYTHON", "")),
        )

    def describe(self) -> str:
        parts = [
            "PostgreSQL ledger" if self.pg_url else "SQLite ledger",
            f"Redis state ({self.redis_url})" if self.redis_url else "in-process state",
            "RPM/TPM limits + budget" if self.limits else "no limits",
            "response cache (every request a miss: lookup + store)" if self.cache else "no response cache",
            "metrics",
            "tracing off" if self.trace == "off" else f"tracing sampled at {float(self.trace):.0%} (OTLP/HTTP)",
        ]
        return ", ".join(parts)


@dataclass(frozen=True)
class Target:
    url: str
    key: str
    model: str
    pid: int | None  # the process whose CPU is measured (None: the mock itself, the direct path)
    tenant: str = ""  # the bench tenant's id on a gateway


def n(opts: Options, x: int) -> int:
    return max(50, int(x * opts.scale))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if (os.cpu_count() or 1) > 1 else argv


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime, all threads


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def http_json(url: str, method: str = "GET", body: object | None = None) -> dict[str, object]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        out: dict[str, object] = json.loads(r.read())
        return out


def cache_lookups(gw: str) -> dict[str, float]:
    """aigw_cache_lookups_total by result, from the gateway's /metrics."""
    with urllib.request.urlopen(gw + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.findall(r'^aigw_cache_lookups_total\{result="(\w+)"\} ([0-9.e+]+)$', text, re.M)
    return {f"cache_{k}": float(v) for k, v in found}


def child_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The bench's environment without any OTEL_* (tracing is on only when asked for), plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, **extra}


def otel_env(opts: Options, sink: str) -> dict[str, str]:
    if opts.trace == "off":
        return {}
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": opts.trace,
        "OTEL_METRICS_EXPORTER": "none",
    }


async def _one(opts: Options, path: Target, *, n_: int, concurrency: int, stream: bool = False) -> Result:
    return await run(
        path.url, path.key, path.model, n=n(opts, n_), concurrency=concurrency, stream=stream, unique=opts.cache
    )


async def _interleaved(
    opts: Options,
    paths: dict[str, Target],
    *,
    n_: int,
    stream: bool = False,
    rounds: int = 10,
    concurrency: int = 1,
) -> dict[str, Result]:
    """The paths taking turns in ``rounds`` slices, in alternating order: a drift in the machine's speed (this VM's
    moves by tens of percent over minutes) then weighs on every path alike instead of on whichever ran last, and no
    path always runs right after another's (its ledger flush, its Redis work)."""
    parts: dict[str, list[Result]] = {name: [] for name in paths}
    cpu: dict[str, float] = dict.fromkeys(paths, 0.0)
    size = max(1, n(opts, n_) // rounds)
    for i in range(rounds):
        for name, path in list(paths.items())[:: 1 if i % 2 == 0 else -1]:
            cpu0 = cpu_seconds(path.pid) if path.pid else 0.0
            parts[name].append(
                await run(
                    path.url, path.key, path.model, n=size, concurrency=concurrency, stream=stream, unique=opts.cache
                )
            )
            cpu[name] += (cpu_seconds(path.pid) - cpu0) if path.pid else 0.0
    return {
        name: Result(
            [x for r in rs for x in r.latencies],
            sum(r.elapsed for r in rs),
            sum(r.errors for r in rs),
            cpu_s=cpu[name] if paths[name].pid else None,
        )
        for name, rs in parts.items()
    }


async def measure(opts: Options, paths: dict[str, Target]) -> tuple[dict[str, dict[str, float]], int]:
    """Each phase runs the paths in turn (direct, forwarder, gateway); the concurrency-1 phases interleave them.
    Returns the figures by path and how many requests the gateway received."""
    runs: dict[str, list[Result]] = {name: [] for name in paths}
    for name, path in paths.items():  # warm-up: connection pools, caches, the interpreter's own
        runs[name].append(await _one(opts, path, n_=300, concurrency=8))
        runs[name].append(await _one(opts, path, n_=100, concurrency=2, stream=True))
    figs: dict[str, dict[str, float]] = {name: {} for name in paths}
    if "c1" in opts.phases:
        for name, r in (await _interleaved(opts, paths, n_=5000)).items():
            runs[name].append(r)
            figs[name] |= {"c1_p50_ms": r.pct(50) * 1000, "c1_p99_ms": r.pct(99) * 1000}
            if r.cpu_s is not None:  # at c=1, latency minus this is time spent waiting (Redis, the database)
                figs[name]["c1_cpu_us_per_req"] = r.cpu_s / max(1, len(r.latencies)) * 1e6
    if "c64" in opts.phases:  # two halves, the second in reverse order (see _interleaved)
        for name, r in (await _interleaved(opts, paths, n_=20000, rounds=2, concurrency=64)).items():
            runs[name].append(r)
            figs[name] |= {"c64_rps": r.rps, "c64_p99_ms": r.pct(99) * 1000}
            if r.cpu_s is not None:
                cpu_us = r.cpu_s / max(1, len(r.latencies)) * 1e6
                figs[name] |= {"cpu_us_per_req": cpu_us, "rps_per_core": 1e6 / cpu_us}
    if "ttfc" in opts.phases:
        for name, r in (await _interleaved(opts, paths, n_=2000, stream=True)).items():
            runs[name].append(r)
            figs[name]["ttfc_p50_ms"] = r.pct(50) * 1000
    if "streams" in opts.phases:  # the direct path has no process of its own to measure
        measured = {name: path for name, path in paths.items() if path.pid}
        for name, r in (await _interleaved(opts, measured, n_=4000, stream=True, rounds=2, concurrency=32)).items():
            runs[name].append(r)
            assert r.cpu_s is not None
            figs[name] |= {"cpu_us_per_stream": r.cpu_s / max(1, len(r.latencies)) * 1e6, "streams_per_s": r.rps}
    direct = figs["direct"]
    for name, path in paths.items():
        f = figs[name]
        f["errors"] = float(sum(r.errors for r in runs[name]))
        if path.pid:
            f["rss_mb"] = rss_mb(path.pid)
            for key, base in (("c1_p50_ms", "c1_added_p50_ms"), ("c1_p99_ms", "c1_added_p99_ms")):
                if key in f:
                    f[base] = f[key] - direct[key]
            if "ttfc_p50_ms" in f:
                f["ttfc_added_p50_ms"] = f["ttfc_p50_ms"] - direct["ttfc_p50_ms"]
    return figs, sum(r.count for r in runs["gateway"])


def gateway_config(opts: Options, tmp: str, mock: str, database_url: str, name: str = "bench") -> Path:
    cfg = Path(tmp) / f"{name}.yaml"
    cfg.write_text(
        f"admin_key: {ADMIN}\n"
        f"database_url: {database_url}\n"
        "log_level: warning\n"
        + (f"redis_url: {opts.redis_url}\n" if opts.redis_url else "")
        + ("cache: {enabled: true}\n" if opts.cache else "")
        + "providers:\n"
        f"  - {{name: mock, type: openai, base_url: '{mock}/v1', api_key: sk-bench}}\n"
        "models:\n"
        "  - {name: bench, targets: [{provider: mock, model: bench-model}]}\n"
    )
    return cfg


@contextmanager
def started(argv: list[str], env: dict[str, str], log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with ExitStack() as stack:
        stderr = stack.enter_context(log.open("wb")) if log is not None else None
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=stderr)
        try:
            yield proc
        except BaseException:
            if log is not None:  # the run failed: show what the process said
                sys.stderr.write("".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:]))
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serve_argv(cfg: Path, port: int) -> list[str]:
    return [str(BIN / "aigw"), "serve", "--config", str(cfg), "--port", str(port)]


def new_tenant(opts: Options, gw: str, pid: int) -> Target:
    """The bench tenant on a started gateway, as the path to drive."""
    wait_http(gw + "/healthz")
    time.sleep(0.2)
    # Within a PostgreSQL INTEGER: the admin API does not bound them yet.
    limits = {"rate_limit_rpm": 10**9, "rate_limit_tpm": 2 * 10**9, "monthly_budget_usd": 10**6}
    tenant = http_json(gw + "/admin/tenants", "POST", {"name": "bench", **(limits if opts.limits else {})})
    return Target(gw + "/v1/chat/completions", str(tenant["api_key"]), "bench", pid, str(tenant["id"]))


def log_problems(log: Path) -> dict[str, int]:
    """The gateway's warning and error lines, by message (a Redis fallback means part of the path was skipped)."""
    found: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            rec = {"level": "error" if "Traceback" in line or "Error" in line else "", "msg": line}
        if isinstance(rec, dict) and rec.get("level") in ("warning", "error", "critical"):
            msg = str(rec.get("msg", ""))
            found[msg] = found.get(msg, 0) + 1
    return found


@dataclass(frozen=True)
class Outcome:
    paths: dict[str, dict[str, float]]  # figures by path: direct, forwarder, gateway
    checks: dict[str, float]  # usage records, requests sent, cache lookups, spans received
    problems: dict[str, int]  # the gateway's warning/error log messages, with counts


def bench(opts: Options) -> Outcome:
    """One full run; returns every figure (also written to bench/results/)."""
    os.sched_setaffinity(0, {1} if (os.cpu_count() or 1) > 1 else {0})
    mock_port, gw_port, sink_port = free_port(), free_port(), free_port()
    mock, gw = f"http://127.0.0.1:{mock_port}", f"http://127.0.0.1:{gw_port}"
    sink = f"http://127.0.0.1:{sink_port}"
    env = child_env()
    py = sys.executable
    extra: dict[str, float] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="aigw-bench-") as tmp:
        if opts.redis_url:
            flush_redis(opts.redis_url)
        db_url = stack.enter_context(fresh_postgres(opts.pg_url)) if opts.pg_url else f"sqlite+aiosqlite:///{tmp}/b.db"
        cfg = gateway_config(opts, tmp, mock, db_url)
        if opts.pg_url:
            subprocess.run([str(BIN / "aigw"), "migrate", "--config", str(cfg)], cwd=ROOT, env=env, check=True)
        stack.enter_context(started(pinned(1, [py, "-m", "bench.mock_upstream", str(mock_port)]), env))
        sink_proc = None
        if opts.trace != "off":
            sink_proc = stack.enter_context(started(pinned(1, [py, "-m", "bench.otlp_sink", str(sink_port)]), env))
            wait_http(sink + "/healthz")
        paths = {"direct": Target(mock + "/v1/chat/completions", "sk-bench", "bench-model", None)}
        forwarders = {"forwarder": [mock]} if opts.forwarder else {}
        if opts.forwarder_redis:  # the floor with shared state: the forwarder plus one Redis round trip
            forwarders["fwd+redis"] = [mock, opts.redis_url]
        for name, args in forwarders.items():
            port = free_port()
            proc = stack.enter_context(started(pinned(0, [py, "-m", "bench.forwarder", str(port), *args]), env))
            wait_http(f"http://127.0.0.1:{port}/healthz")
            paths[name] = Target(f"http://127.0.0.1:{port}/v1/chat/completions", "sk-bench", "bench-model", proc.pid)
        gw_log = Path(tmp) / "gateway.log"
        if opts.baseline or opts.baseline_python:  # on PostgreSQL both share the database (migrated by this code)
            base_port = free_port()
            base_db = db_url if opts.pg_url else f"sqlite+aiosqlite:///{tmp}/base.db"
            base_cfg = gateway_config(opts, tmp, mock, base_db, name="baseline")
            base_env = child_env(otel_env(opts, sink) | {"PYTHONPATH": opts.baseline or str(ROOT / "src")})
            argv = serve_argv(base_cfg, base_port)
            if opts.baseline_python:
                argv = [opts.baseline_python, "-m", "aigw", *argv[1:]]
            base_proc = stack.enter_context(started(pinned(0, argv), base_env, Path(tmp) / "baseline.log"))
            paths["baseline"] = new_tenant(opts, f"http://127.0.0.1:{base_port}", base_proc.pid)
        with started(pinned(0, serve_argv(cfg, gw_port)), child_env(otel_env(opts, sink)), gw_log) as gw_proc:
            paths["gateway"] = new_tenant(opts, gw, gw_proc.pid)
            figs, sent = asyncio.run(measure(opts, paths))
            time.sleep(1.5)  # the usage ledger flushes every 0.5 s
            tenant_id = paths["gateway"].tenant
            usage = http_json(f"{gw}/admin/tenants/{tenant_id}/usage")
            extra |= cache_lookups(gw) if opts.cache else {}
        problems = log_problems(gw_log)
        # After the gateway stopped: its span processor has flushed what it buffered.
        if sink_proc is not None:
            spans = http_json(sink + "/stats")
            extra |= {f"otlp_{k}": float(v) for k, v in spans.items() if isinstance(v, int | float)}
    extra |= {"gateway_requests": float(sent), "usage_records": float(usage["requests"])}  # type: ignore[arg-type]
    result = Outcome(figs, extra, problems)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    options = asdict(opts) | {"phases": sorted(opts.phases)}  # a frozenset is not JSON
    text = json.dumps({"when": when, "options": options, **asdict(result)}, indent=2)
    (out / "latest.json").write_text(text)
    (out / f"{opts.profile}-trace-{opts.trace}.json").write_text(text)
    return result


def print_report(opts: Options, result: Outcome) -> None:
    figs = result.paths
    print(f"\naigw benchmark, profile {opts.profile}: {opts.describe()}")
    print(
        "gateway and bare forwarder on core 0, mock upstream + load generator"
        f"{' + OTLP sink' if opts.trace != 'off' else ''} on core 1; one worker; BENCH_SCALE={opts.scale:g}"
    )
    if opts.forwarder_redis:
        print("fwd+redis: the forwarder plus one Redis round trip per request before forwarding, one write after")
    if opts.baseline or opts.baseline_python:
        code = opts.baseline or "this checkout"
        under = f" under {opts.baseline_python}" if opts.baseline_python else ""
        print(f"baseline: a second gateway from {code}{under}, on core 0 too, interleaved with this one")
    print(report.table(figs, opts.profile))
    if "cpu_us_per_req" in figs["gateway"]:
        print(report.peers(figs["gateway"]["cpu_us_per_req"], figs.get("forwarder", {}).get("cpu_us_per_req")))
    print_checks(opts, result)


def print_checks(opts: Options, result: Outcome) -> None:
    """Usage records vs requests, cache lookups, spans exported, and anything the gateway logged."""
    checks = result.checks
    sent, recorded = checks["gateway_requests"], checks["usage_records"]
    print(f"  usage records written: {recorded:.0f} of {sent:.0f} gateway requests (warm-up included)")
    if opts.cache:
        hit, miss = checks.get("cache_hit", 0.0), checks.get("cache_miss", 0.0)
        print(f"  response cache lookups: {miss:.0f} misses, {hit:.0f} hits")
    if opts.trace != "off":
        print(
            f"  spans exported: {checks.get('otlp_spans', 0):.0f} in {checks.get('otlp_traces', 0):.0f} traces "
            f"({checks.get('otlp_traces', 0) / max(1.0, sent):.2%} of requests sampled; "
            f"{checks.get('otlp_trace_exports', 0):.0f} OTLP exports)"
        )

    problems = result.problems
    if problems:
        print("  the gateway logged warnings (Redis fallbacks mean part of the path was skipped for a while):")
        for msg, count in sorted(problems.items(), key=lambda kv: -kv[1])[:8]:
            print(f"    {count:>5} x {msg[:150]}")


def ok(result: Outcome) -> bool:
    """No failed request, and one usage record per gateway request."""
    checks = result.checks
    return not any(f["errors"] for f in result.paths.values()) and checks["usage_records"] == checks["gateway_requests"]


def main() -> int:
    opts = Options.from_env()
    result = bench(opts)
    print_report(opts, result)
    return 0 if ok(result) else 1


if __name__ == "__main__":
    raise SystemExit(main())
