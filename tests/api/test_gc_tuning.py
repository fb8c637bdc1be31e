"""The collector settings a server process takes (aigw.app.tune_gc, ADR 0010), and an app built inside another
program (these tests) leaving the process's collector alone."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from tests.api.conftest import Stack


def test_tune_gc_freezes_start_up_and_raises_the_young_threshold() -> None:
    code = (
        "import gc, json; from aigw.app import tune_gc; before = gc.get_threshold(); tune_gc(); "
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after, frozen = json.loads(out)
    assert before == [700, 10, 10]
    assert after == [50_000, 20, 10]
    assert frozen > 10_000, "the modules and objects built so far are out of the collector's sight"


def test_an_app_started_in_process_leaves_the_collector_alone(stack: Stack) -> None:
    assert stack.gw.url  # the module's gateway has started (its lifespan has run)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0
