"""`make bench-trace`: the gateway with tracing off, sampled at 100 % and at 1 %, back to back (issue 7).

Same harness as `make bench` (BENCH_PROFILE, BENCH_LIMITS, BENCH_REDIS, BENCH_PG apply; the bare forwarder is
skipped); BENCH_SCALE defaults to 0.3. Spans go to a local OTLP/HTTP sink on core 1 that only counts them.
"""

from __future__ import annotations

import os
from dataclasses import replace

from bench.run import PHASES, Options, bench, ok, print_checks

MODES = ("off", "1", "0.01")


def main() -> int:
    os.environ.setdefault("BENCH_SCALE", "0.3")
    base = replace(Options.from_env(), forwarder=False, phases=frozenset(PHASES))  # its table needs every phase
    rows: list[tuple[str, dict[str, float], dict[str, float]]] = []
    good = True
    for mode in MODES:
        opts = replace(base, trace=mode)
        print(f"bench-trace: profile {opts.profile}, tracing {mode} ...", flush=True)
        result = bench(opts)
        print_checks(opts, result)
        good = good and ok(result)
        rows.append((mode, result.paths["gateway"], result.checks))
    off_cpu = rows[0][1]["cpu_us_per_req"]
    print(
        f"\naigw tracing cost, profile {base.profile} ({base.describe().rsplit(', tracing', 1)[0]}), "
        f"BENCH_SCALE={base.scale:g}"
    )
    head = ("tracing", "CPU/req", "vs off", "c=1 p50 added", "c=1 p99 added", "req/s c=64", "CPU/stream", "sampled")
    table = [head]
    for mode, g, checks in rows:
        sampled = "" if mode == "off" else f"{checks.get('otlp_traces', 0) / max(1.0, checks['gateway_requests']):.1%}"
        table.append(
            (
                "off" if mode == "off" else f"{float(mode):.0%}",
                f"{g['cpu_us_per_req']:.0f} µs",
                f"{g['cpu_us_per_req'] / off_cpu:.2f}x",
                f"{g['c1_added_p50_ms']:.3f} ms",
                f"{g['c1_added_p99_ms']:.3f} ms",
                f"{g['c64_rps']:,.0f}",
                f"{g['cpu_us_per_stream']:.0f} µs",
                sampled,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print("  " + "  ".join(f"{c:>{w}}" for c, w in zip(r, widths, strict=True)))
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
