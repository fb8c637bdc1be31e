"""The benchmark's printout: the three paths side by side, ratios, issue 8's targets with PASS/MISS, the peers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Figures = Mapping[str, float]

# CPU per proxied request of the peers, milliseconds, as measured in issue 8 with this harness and mock upstream.
PEERS_CPU_MS: dict[str, tuple[float, float]] = {
    "LiteLLM 1.108.7 proxy": (10.0, 15.0),
    "Portkey gateway 1.15.2": (1.1, 1.4),
}
# Issue 8: "≥ 2.5x Portkey's and ≥ 25x LiteLLM's throughput per core" (against the middle of each published range).
PEER_TARGET_RATIO: dict[str, float] = {"LiteLLM 1.108.7 proxy": 25.0, "Portkey gateway 1.15.2": 2.5}
ISSUE_FLOOR_US = 160.0  # "a bare uvicorn + aiohttp forwarder spends ~0.16 ms"


def targets(profile: str) -> dict[str, float]:
    """Issue 8's upper bounds, by figure key."""
    return {
        "cpu_us_per_req": 300.0 if profile == "embedded" else 450.0,
        "c1_added_p50_ms": 0.5,
        "c1_added_p99_ms": 2.0,
        "ttfc_added_p50_ms": 2.0,
        "cpu_us_per_stream": 1500.0,
        "rss_mb": 150.0,
    }


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    unit: str
    digits: int
    ratio: bool = False  # print gateway ÷ forwarder


ROWS = (
    Row("CPU per request, c=64", "cpu_us_per_req", "µs", 0, ratio=True),
    Row("requests/s per core (1 / CPU)", "rps_per_core", "", 0),
    Row("requests/s, c=64", "c64_rps", "", 0),
    Row("p99 latency, c=64", "c64_p99_ms", "ms", 2),
    Row("latency p50, c=1", "c1_p50_ms", "ms", 3),
    Row("added latency p50, c=1", "c1_added_p50_ms", "ms", 3, ratio=True),
    Row("added latency p99, c=1", "c1_added_p99_ms", "ms", 3, ratio=True),
    Row("CPU per request, c=1", "c1_cpu_us_per_req", "µs", 0, ratio=True),
    Row("first chunk p50, c=1 (20-chunk stream)", "ttfc_p50_ms", "ms", 3),
    Row("first-chunk overhead p50, c=1", "ttfc_added_p50_ms", "ms", 3, ratio=True),
    Row("CPU per stream (20 chunks), c=32", "cpu_us_per_stream", "µs", 0, ratio=True),
    Row("streams/s, c=32", "streams_per_s", "", 0),
    Row("RSS after the run", "rss_mb", "MB", 1),
    Row("failed requests", "errors", "", 0),
)


def _fmt(value: float | None, unit: str, digits: int) -> str:
    if value is None or value != value:  # missing or NaN
        return "—"
    return f"{value:,.{digits}f} {unit}".rstrip()


def verdict(value: float | None, bound: float | None) -> str:
    if bound is None or value is None:
        return ""
    return "PASS" if value <= bound else "MISS"


def table(paths: Mapping[str, Figures], profile: str) -> str:
    bounds = targets(profile)
    names = list(paths)
    base = "baseline" in paths  # BENCH_BASELINE: this code against another checkout's, same run
    header = [
        "figure",
        *names,
        "gw ÷ fwd" if "forwarder" in paths else "",
        *(["gw ÷ base"] if base else []),
        "target",
        "",
    ]
    lines = [header]
    for row in ROWS:
        cells = [row.label, *(_fmt(paths[p].get(row.key), row.unit, row.digits) for p in names)]
        gw, fwd = paths["gateway"].get(row.key), paths.get("forwarder", {}).get(row.key)
        cells.append(f"{gw / fwd:.1f}x" if row.ratio and gw is not None and fwd and fwd > 0 else "")
        if base:
            was = paths["baseline"].get(row.key)
            cells.append(f"{gw / was:.3f}x" if row.ratio and gw is not None and was and was > 0 else "")
        bound = bounds.get(row.key)
        cells.append(f"≤ {_fmt(bound, row.unit, row.digits if row.unit != 'µs' else 0)}" if bound else "")
        cells.append(verdict(gw, bound))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        first = f"  {line[0]:<{widths[0]}}"
        rest = "  ".join(f"{c:>{w}}" for c, w in zip(line[1:-1], widths[1:-1], strict=True))
        out.append(f"{first}  {rest}  {line[-1]}".rstrip())
    return "\n".join(out)


def peers(gateway_cpu_us: float, forwarder_cpu_us: float | None) -> str:
    """Throughput per core against the peers' published CPU per request (issue 8), and against the floor."""
    lines = ["  throughput per core vs the peers (CPU per request measured in issue 8, same harness and mock):"]
    for name, (lo, hi) in PEERS_CPU_MS.items():
        r_lo, r_hi = lo * 1000 / gateway_cpu_us, hi * 1000 / gateway_cpu_us
        mid, want = (r_lo + r_hi) / 2, PEER_TARGET_RATIO[name]
        lines.append(
            f"    {name:<25} {f'{lo:g}-{hi:g} ms':>10}   aigw {r_lo:.1f}-{r_hi:.1f}x (mid {mid:.1f}x)   "
            f"target ≥ {want:g}x  {'PASS' if mid >= want else 'MISS'}"
        )
    if forwarder_cpu_us:
        lines.append(
            f"    {'bare forwarder, this run':<25} {f'{forwarder_cpu_us / 1000:.3f} ms':>10}   aigw uses "
            f"{gateway_cpu_us / forwarder_cpu_us:.1f}x its CPU (issue 8: ~{ISSUE_FLOOR_US / 1000:g} ms, the floor)"
        )
    return "\n".join(lines)
