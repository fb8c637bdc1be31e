"""`make bench`: the gateway's overhead over a direct call to a fast mock upstream.

Layout on a 2-core machine: the gateway pinned to core 0; the mock upstream and this load generator on core 1.
Prints added latency p50/p99 at concurrency 1, requests/s and p99 at concurrency 64, streaming time-to-first-chunk
overhead, gateway CPU time per request and RSS. Sizes scale with BENCH_SCALE (default 1.0).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.load import Result, run

ROOT = Path(__file__).resolve().parents[1]
SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
ADMIN = "bench-admin-key-0123456789"
CLK = os.sysconf("SC_CLK_TCK")
# BENCH_LIMITS=0 benchmarks a tenant without rate limits/budget; BENCH_REDIS=redis://… shares state through Redis.
LIMITS = os.environ.get("BENCH_LIMITS", "1") != "0"
REDIS_URL = os.environ.get("BENCH_REDIS", "")


def n(x: int) -> int:
    return max(50, int(x * SCALE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if os.cpu_count() and os.cpu_count() > 1 else argv  # type: ignore[operator]


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
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def admin(url: str, method: str, path: str, body: object | None = None) -> dict[str, object]:
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        out: dict[str, object] = json.loads(r.read())
        return out


def ms(x: float) -> str:
    return f"{x * 1000:.2f}"


async def measure(gw: str, mock: str, key: str, gw_pid: int) -> dict[str, float]:
    direct_url, gw_url = f"{mock}/v1/chat/completions", f"{gw}/v1/chat/completions"
    warm: list[Result] = []
    for url, model in ((direct_url, "bench-model"), (gw_url, "bench")):  # warm-up: connection pools, caches
        warm.append(await run(url, "sk-bench" if url == direct_url else key, model, n=n(300), concurrency=8))
        warm.append(
            await run(url, "sk-bench" if url == direct_url else key, model, n=n(100), concurrency=2, stream=True)
        )

    d1 = await run(direct_url, "sk-bench", "bench-model", n=n(2000), concurrency=1)
    g1 = await run(gw_url, key, "bench", n=n(2000), concurrency=1)
    d64 = await run(direct_url, "sk-bench", "bench-model", n=n(10000), concurrency=64)
    cpu0 = cpu_seconds(gw_pid)
    g64 = await run(gw_url, key, "bench", n=n(10000), concurrency=64)
    cpu_per_req = (cpu_seconds(gw_pid) - cpu0) / max(1, len(g64.latencies))
    ds = await run(direct_url, "sk-bench", "bench-model", n=n(1000), concurrency=1, stream=True)
    gs = await run(gw_url, key, "bench", n=n(1000), concurrency=1, stream=True)
    errors = sum(r.errors for r in (d1, g1, d64, g64, ds, gs))
    res: dict[str, float] = {
        "c1_direct_p50_ms": d1.pct(50) * 1000,
        "c1_gateway_p50_ms": g1.pct(50) * 1000,
        "c1_added_p50_ms": (g1.pct(50) - d1.pct(50)) * 1000,
        "c1_added_p99_ms": (g1.pct(99) - d1.pct(99)) * 1000,
        "c64_direct_rps": d64.rps,
        "c64_gateway_rps": g64.rps,
        "c64_direct_p99_ms": d64.pct(99) * 1000,
        "c64_gateway_p99_ms": g64.pct(99) * 1000,
        "stream_ttfb_direct_p50_ms": ds.pct(50) * 1000,
        "stream_ttfb_gateway_p50_ms": gs.pct(50) * 1000,
        "stream_ttfb_added_p50_ms": (gs.pct(50) - ds.pct(50)) * 1000,
        "gateway_cpu_us_per_req": cpu_per_req * 1e6,
        "gateway_rss_mb": rss_mb(gw_pid),
        "errors": float(errors),
        "gateway_requests": float(sum(len(r.latencies) + r.errors for r in (*warm[2:], g1, g64, gs))),
    }
    return res


def table(r: dict[str, float]) -> str:
    rows = [
        (
            "added latency p50, c=1",
            f"{r['c1_added_p50_ms']:.3f} ms",
            f"direct {r['c1_direct_p50_ms']:.3f} / gw {r['c1_gateway_p50_ms']:.3f} ms",
        ),
        ("added latency p99, c=1", f"{r['c1_added_p99_ms']:.3f} ms", ""),
        ("requests/s, c=64", f"{r['c64_gateway_rps']:.0f}", f"direct {r['c64_direct_rps']:.0f}"),
        ("p99 latency, c=64", f"{r['c64_gateway_p99_ms']:.2f} ms", f"direct {r['c64_direct_p99_ms']:.2f} ms"),
        (
            "stream first-chunk overhead p50",
            f"{r['stream_ttfb_added_p50_ms']:.3f} ms",
            f"direct {r['stream_ttfb_direct_p50_ms']:.3f} / gw {r['stream_ttfb_gateway_p50_ms']:.3f} ms",
        ),
        ("gateway CPU per request (c=64)", f"{r['gateway_cpu_us_per_req']:.0f} µs", ""),
        ("gateway RSS after the run", f"{r['gateway_rss_mb']:.1f} MB", ""),
        ("failed requests", f"{r['errors']:.0f}", ""),
    ]
    w = max(len(a) for a, _, _ in rows)
    return "\n".join(f"  {a:<{w}}  {b:>12}  {c}" for a, b, c in rows)


def main() -> int:
    os.sched_setaffinity(0, {1} if (os.cpu_count() or 1) > 1 else {0})
    mock_port, gw_port = free_port(), free_port()
    mock, gw = f"http://127.0.0.1:{mock_port}", f"http://127.0.0.1:{gw_port}"
    with tempfile.TemporaryDirectory(prefix="aigw-bench-") as tmp:
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(
            f"admin_key: {ADMIN}\n"
            f"database_url: sqlite+aiosqlite:///{tmp}/bench.db\n"
            "log_level: warning\n" + (f"redis_url: {REDIS_URL}\n" if REDIS_URL else "") + "providers:\n"
            f"  - {{name: mock, type: openai, base_url: '{mock}/v1', api_key: sk-bench}}\n"
            "models:\n"
            "  - {name: bench, targets: [{provider: mock, model: bench-model}]}\n"
        )
        procs = [
            subprocess.Popen(pinned(1, [sys.executable, "-m", "bench.mock_upstream", str(mock_port)]), cwd=ROOT),
            subprocess.Popen(
                pinned(
                    0,
                    [str(Path(sys.executable).parent / "aigw"), "serve", "--config", str(cfg), "--port", str(gw_port)],
                ),
                cwd=ROOT,
            ),
        ]
        try:
            wait_http(gw + "/healthz")
            time.sleep(0.2)
            # Limits and a budget far above what the run uses: their checks are on the path, never refusing.
            limits = {"rate_limit_rpm": 10**9, "rate_limit_tpm": 10**12, "monthly_budget_usd": 10**6} if LIMITS else {}
            tenant = admin(gw, "POST", "/admin/tenants", {"name": "bench", **limits})
            key = str(tenant["api_key"])
            results = asyncio.run(measure(gw, mock, key, procs[1].pid))
            time.sleep(1.5)  # the usage ledger flushes every 0.5 s
            usage = admin(gw, "GET", f"/admin/tenants/{tenant['id']}/usage")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(15)
    state = f"Redis {REDIS_URL}" if REDIS_URL else "in-process state"
    print(
        "\naigw benchmark (gateway on core 0; mock upstream + load generator on core 1; 1 worker, SQLite, usage on, "
        f"{'RPM/TPM limits + budget' if LIMITS else 'no limits'}, {state})"
    )
    print(table(results))
    recorded = int(usage["requests"])  # type: ignore[call-overload]
    print(f"  usage records written: {recorded} of {results['gateway_requests']:.0f} gateway requests (incl. warm-up)")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({**results, "usage_records": recorded}, indent=2))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
