"""Multi-worker metrics: two real processes write into one PROMETHEUS_MULTIPROC_DIR; a scrape in either sees both."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from aigw.telemetry.metrics import mark_process_dead, prepare_multiproc_dir, render_multiprocess

WORKER = textwrap.dedent(
    """
    import os, sys
    from decimal import Decimal
    from aigw.telemetry.metrics import Metrics

    requests, depth, dropped, state, render = sys.argv[1:6]
    m = Metrics.from_env()
    for _ in range(int(requests)):
        m.request_done(tenant="t1", model="gpt-4o", provider="openai", status=200, cache="miss", stream=True,
                       duration_s=0.5, overhead_s=0.001, cost_usd=Decimal("0.5"))
    m.upstream_attempt(provider_kind="ollama", provider="local", operation="chat", request_model="llama3",
                       response_model="llama3", duration_s=0.2, ttfc_s=0.05, error_type=None,
                       input_tokens=10, output_tokens=5)
    m.usage_queue(depth=int(depth), dropped_total=int(dropped))
    m.breaker_transition(target="local/llama3", state=state)
    print(os.getpid())
    if render == "render":
        sys.stdout.write(m.render()[0].decode())
    if render == "close":
        m.close()
    """
)


def run_worker(directory: Path, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    out = subprocess.run(
        [sys.executable, "-c", WORKER, *args], env=env, capture_output=True, text=True, timeout=30, check=True
    ).stdout
    pid, _, text = out.partition("\n")
    return int(pid), text


Key = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str) -> dict[Key, float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


REQUESTS = (
    "aigw_requests_total",
    frozenset(dict(tenant="t1", model="gpt-4o", provider="openai", status="200", cache="miss", stream="true").items()),
)
COST = ("aigw_cost_usd_total", frozenset(dict(tenant="t1", model="gpt-4o", provider="openai").items()))
TOKENS_IN = (
    "gen_ai_client_token_usage_sum",
    frozenset(
        dict(
            gen_ai_operation_name="chat", gen_ai_provider_name="ollama", aigw_provider="local",
            gen_ai_request_model="llama3", gen_ai_response_model="llama3", gen_ai_token_type="input",
        ).items()
    ),
)  # fmt: skip
DEPTH: Key = ("aigw_usage_queue_depth", frozenset())
DROPPED: Key = ("aigw_usage_dropped_total", frozenset())
BREAKER = ("aigw_breaker_state", frozenset({("target", "local/llama3")}))


def test_two_workers_aggregate_at_scrape(tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    prepare_multiproc_dir(str(directory))
    pid_a, _ = run_worker(directory, "3", "4", "2", "open", "-")
    # Worker B scrapes: what A wrote is included (A's process is gone, but nobody has marked it dead yet).
    pid_b, text_b = run_worker(directory, "2", "5", "1", "half_open", "render")
    seen = parse(text_b)
    assert seen[REQUESTS] == 5
    assert seen[COST] == 2.5
    assert seen[TOKENS_IN] == 20
    assert seen[DROPPED] == 3
    assert seen[DEPTH] == 9  # livesum
    assert seen[BREAKER] == 1  # livemostrecent: B's half_open came after A's open

    # Once B is known dead, its live gauges go (A's are what is left); its counters stay.
    mark_process_dead(pid_b, str(directory))
    after = parse(render_multiprocess(str(directory))[0].decode())
    assert after[REQUESTS] == 5
    assert after[DROPPED] == 3
    assert after[DEPTH] == 4
    assert after[BREAKER] == 2
    mark_process_dead(pid_a, str(directory))
    after = parse(render_multiprocess(str(directory))[0].decode())
    assert after[REQUESTS] == 5
    assert BREAKER not in after

    # A worker that shuts down cleanly (Metrics.close) takes its live gauges with it, and leaves its counters.
    run_worker(directory, "1", "7", "0", "open", "close")
    after = parse(render_multiprocess(str(directory))[0].decode())
    assert after[REQUESTS] == 6
    assert DEPTH not in after and BREAKER not in after

    # A new start clears the directory: nothing from the previous run leaks into the next.
    prepare_multiproc_dir(str(directory))
    assert REQUESTS not in parse(render_multiprocess(str(directory))[0].decode())
