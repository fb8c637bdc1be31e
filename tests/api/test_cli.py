"""The ``aigw`` command as an operator runs it: real subprocesses, real ports, real signals.

Every process is bounded by a timeout and stopped in ``finally`` (SIGTERM, then SIGKILL), even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from aigw import __version__
from aigw.store.migrate import head_revision
from tests.fakes import faults
from tests.fakes.ollama_fake import FakeOllama
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.databases import run_private
from tests.support.serve import ADMIN, AIGW, STOP_DEADLINE_S, Served, clean_env, serving

SECRET = "sk-THIS-IS-SECRET"
KEY_SYNC_DEADLINE_S = 5.0  # key_sync_interval_s is 1 s: a key reaches every worker well within this
TABLES = {"tenants", "api_keys", "usage_records", "alembic_version"}


def run_aigw(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AIGW), *args], env=env or clean_env(), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def write_config(path: Path, database_url: str, olla: FakeOllama | None = None, **extra: Any) -> Path:
    config: dict[str, Any] = {"admin_key": ADMIN, "database_url": database_url, "usage": {"flush_interval_s": 0.05}}
    if olla is not None:
        config["providers"] = [{"name": "local", "type": "ollama", "base_url": olla.url}]
        config["models"] = [{"name": "llama", "targets": [{"provider": "local", "model": "llama3:8b"}]}]
    path.write_text(yaml.safe_dump(config | extra), encoding="utf-8")
    return path


def sqlite(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def sqlite_tables(path: Path) -> tuple[set[str], str | None]:
    with sqlite3.connect(path) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = (
            db.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in names else None
        )
    return names, version[0] if version else None


# -- flags and config errors -----------------------------------------------------------------------------------


def test_version() -> None:
    done = run_aigw("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"aigw {__version__}"


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_no_config_is_exit_2_with_a_clear_message(command: str, tmp_path: Path) -> None:
    done = run_aigw(command, cwd=tmp_path)
    assert done.returncode == 2
    assert "--config" in done.stderr and "AIGW_CONFIG" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    done = run_aigw("serve", "--config", str(missing))
    assert done.returncode == 2
    assert str(missing) in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_config_errors_are_all_listed_with_paths(tmp_path: Path) -> None:
    """One file, three kinds of mistake: the operator sees every one of them, each with its path, at once."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "admin_key: ${AIGW_CLI_TEST_UNSET_VAR}\n"
        "database_url: sqlite+aiosqlite:///./x.db\n"
        "bogus_key: 1\n"
        "providers:\n"
        "  - {name: oai, type: openai, api_key: " + SECRET + ", colour: blue}\n"
        "  - {name: weird, type: bogus}\n",
        encoding="utf-8",
    )
    done = run_aigw("serve", "--config", str(bad))
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out
    for path, what in [
        ("admin_key", "AIGW_CLI_TEST_UNSET_VAR"),
        ("bogus_key", "Extra inputs"),
        ("providers[0].colour", "Extra inputs"),
        ("providers[1].type", "unknown type"),
    ]:
        assert any(line.strip().startswith(f"- {path}:") and what in line for line in out.splitlines()), (
            f"no problem reported for {path} ({what}):\n{out}"
        )
    assert SECRET not in out


@pytest.mark.parametrize(
    ("body", "path", "what"),
    [
        pytest.param(f"admin_key: {ADMIN}\nbogus_key: 1\n", "bogus_key", "Extra inputs", id="unknown-key"),
        pytest.param("admin_key: ${AIGW_CLI_TEST_UNSET_VAR}\n", "admin_key", "AIGW_CLI_TEST_UNSET_VAR", id="unset-var"),
        pytest.param(
            f"admin_key: {ADMIN}\nproviders:\n  - {{name: weird, type: bogus}}\n",
            "providers[0].type",
            "unknown type",
            id="bad-type",
        ),
    ],
)
def test_each_config_error_alone(body: str, path: str, what: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(body, encoding="utf-8")
    done = run_aigw("serve", "--config", str(bad))
    assert done.returncode == 2, done.stderr
    assert str(bad) in done.stderr
    assert any(line.strip().startswith(f"- {path}:") and what in line for line in done.stderr.splitlines()), done.stderr


@pytest.mark.parametrize(
    "problem",
    [
        pytest.param("  - {name: oai, type: openai, api_key: %s, colour: blue}\n", id="api_key-beside-unknown-key"),
        pytest.param("  - {name: oai, type: openai, api_kye: %s}\n", id="misspelt-key"),
        pytest.param("  - {name: oai, type: openai, timeout_s: %s}\n", id="wrong-typed-field"),
        pytest.param("  - {name: oai, type: %s}\n", id="provider-type"),
    ],
)
def test_errors_never_echo_a_secret(problem: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"admin_key: {ADMIN}\nproviders:\n" + problem % SECRET, encoding="utf-8")
    done = run_aigw("serve", "--config", str(bad))
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "providers[0]" in out
    assert SECRET not in out, f"the config error output echoes a value from the file:\n{out}"


def test_config_flag_wins_over_aigw_config(tmp_path: Path) -> None:
    good = write_config(tmp_path / "good.yaml", sqlite(tmp_path / "a.db"))
    done = run_aigw("migrate", "--config", str(good), env=clean_env(AIGW_CONFIG=str(tmp_path / "missing.yaml")))
    assert done.returncode == 0, done.stderr
    assert sqlite_tables(tmp_path / "a.db")[0] >= TABLES


# -- serving ---------------------------------------------------------------------------------------------------


def test_serve_creates_and_migrates_a_fresh_sqlite_database(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "dir" / "aigw.db"
    config = write_config(tmp_path / "aigw.yaml", sqlite(db))
    assert not db.parent.exists()
    with serving(tmp_path, "--config", str(config)) as gw:
        assert gw.get("/healthz").status_code == 200
        ready = gw.get("/readyz")
        assert ready.status_code == 200, ready.text
        tables, version = sqlite_tables(db)
        assert tables >= TABLES
        assert version == head_revision()


def test_sigterm_stops_gracefully_with_exit_0(tmp_path: Path) -> None:
    config = write_config(tmp_path / "aigw.yaml", sqlite(tmp_path / "aigw.db"))
    with serving(tmp_path, "--config", str(config)) as gw:
        assert gw.get("/readyz").status_code == 200
        started = time.monotonic()
        code = gw.stop()
        took = time.monotonic() - started
    assert code is not None, f"aigw serve ignored SIGTERM for {STOP_DEADLINE_S}s:\n{gw.output()}"
    assert took < STOP_DEADLINE_S
    assert code == 0, f"aigw serve exited with {code} after SIGTERM (want 0):\n{gw.output()[-600:]}"


def test_sigterm_drains_an_in_flight_stream_refuses_new_connections_and_flushes_usage(tmp_path: Path) -> None:
    db = tmp_path / "aigw.db"
    with FakeOllama() as olla:
        olla.inject(faults.slow(0.3))  # 0.3 s before every chunk: the stream is still running when SIGTERM comes
        config = write_config(tmp_path / "aigw.yaml", sqlite(db), olla)
        with serving(tmp_path, "--config", str(config)) as gw:
            key = gw.admin("POST", "/admin/tenants", {"name": "drain"}).json()["api_key"]
            body = {"model": "llama", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            lines: list[str] = []
            headers = {"authorization": f"Bearer {key}"}
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
                it = r.iter_lines()
                while not (line := next(it)).startswith("data: "):
                    pass
                lines.append(line)
                gw.proc.send_signal(signal.SIGTERM)  # mid-stream
                deadline = time.monotonic() + STOP_DEADLINE_S
                while True:  # the listener closes at once; the stream being served carries on
                    try:
                        httpx.get(gw.url + "/healthz", timeout=1)
                    except httpx.TransportError:
                        break
                    assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
                lines += [line for line in it if line.startswith("data: ")]
            code = gw.proc.wait(STOP_DEADLINE_S)
    assert lines[-1] == "data: [DONE]", lines[-3:]
    assert len(lines) > 3
    assert code == 0, gw.output()[-600:]
    with sqlite3.connect(db) as conn:  # flushed before exit: one row, the stream's, complete
        rows = conn.execute("SELECT status, stream, completion_tokens FROM usage_records").fetchall()
    assert len(rows) == 1 and rows[0][0] == 200 and rows[0][1] and rows[0][2] > 0, rows


def model_ids(gw: Served, key: str) -> set[str]:
    return {m["id"] for m in gw.get("/v1/models", key).json()["data"]}


def test_sighup_reloads_aliases_without_dropping_a_stream(tmp_path: Path) -> None:
    db = tmp_path / "aigw.db"
    path = tmp_path / "aigw.yaml"
    with FakeOllama() as olla:
        config = write_config(path, sqlite(db), olla)
        with serving(tmp_path, "--config", str(config)) as gw:
            key = gw.admin("POST", "/admin/tenants", {"name": "reload"}).json()["api_key"]
            assert "llama-b" not in model_ids(gw, key)
            olla.inject(faults.slow(0.2))
            body = {"model": "llama", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            headers = {"authorization": f"Bearer {key}"}
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
                it = r.iter_lines()
                lines = [next(line for line in it if line.startswith("data: "))]
                new = yaml.safe_load(path.read_text())
                new["models"].append({"name": "llama-b", "targets": [{"provider": "local", "model": "llama3:8b"}]})
                path.write_text(yaml.safe_dump(new))
                gw.proc.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 5
                while "llama-b" not in model_ids(gw, key):  # the reload is done between two requests
                    assert time.monotonic() < deadline, "SIGHUP did not reload the aliases:\n" + gw.output()[-600:]
                lines += [line for line in it if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]", "the stream running across the reload completes"
            chat = httpx.post(
                gw.url + "/v1/chat/completions",
                json={"model": "llama-b", "messages": [{"role": "user", "content": "hi"}]},
                headers=headers,
                timeout=10,
            )
            assert chat.status_code == 200, chat.text

            path.write_text("models: [not, a, mapping")  # broken YAML: the running config stays
            gw.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while "config reload failed" not in gw.output():
                assert time.monotonic() < deadline, gw.output()[-600:]
                assert gw.get("/healthz").status_code == 200
            assert "llama-b" in model_ids(gw, key) and gw.proc.poll() is None

            new["database_url"] = sqlite(tmp_path / "other.db")
            path.write_text(yaml.safe_dump(new))
            gw.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while "only take effect after a restart" not in gw.output():
                assert time.monotonic() < deadline, gw.output()[-600:]
            assert "database_url" in gw.output()
            assert gw.get("/readyz").status_code == 200
            code = gw.stop()
    assert code == 0


def test_one_json_access_line_per_request_and_no_secret_in_the_logs(tmp_path: Path) -> None:
    upstream_key = "sk-upstream-SECRET-0123456789"
    with FakeOpenAI(api_key=upstream_key) as oai:
        config = write_config(
            tmp_path / "aigw.yaml",
            sqlite(tmp_path / "aigw.db"),
            log_level="info",
            providers=[{"name": "oai", "type": "openai", "base_url": oai.base_url, "api_key": upstream_key}],
            models=[{"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-4o-mini"}]}],
        )
        with serving(tmp_path, "--config", str(config)) as gw:
            tenant = gw.admin("POST", "/admin/tenants", {"name": "logged"}).json()
            key = tenant["api_key"]
            ids = []
            for body in (
                {"model": "gpt", "messages": [{"role": "user", "content": "PROMPT-TEXT-must-not-be-logged"}]},
                {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            ):
                r = httpx.post(
                    gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10
                )
                ids.append((r.headers["x-request-id"], r.status_code))
            httpx.post(gw.url + "/v1/chat/completions", json={}, headers={"authorization": f"Bearer {key}x"})
            assert gw.stop() == 0
    output = gw.output()
    for secret in (ADMIN, key, upstream_key, "PROMPT-TEXT-must-not-be-logged"):
        assert secret not in output, f"a secret or a prompt reached the logs: {secret[:8]}…"
    access = [json.loads(line) for line in output.splitlines() if '"logger":"aigw.access"' in line]
    assert [(a["request_id"], a["status"]) for a in access] == ids
    ok = access[0]
    assert (ok["tenant"], ok["model"], ok["provider"], ok["cache"]) == (tenant["id"], "gpt", "oai", "bypass")
    assert ok["prompt_tokens"] > 0 and ok["latency_ms"] > 0 and ok["level"] == "info"


def test_aigw_config_env_instead_of_flag(tmp_path: Path) -> None:
    config = write_config(tmp_path / "aigw.yaml", sqlite(tmp_path / "env.db"))
    with serving(tmp_path, env=clean_env(AIGW_CONFIG=str(config))) as gw:
        assert gw.get("/readyz").status_code == 200
        assert gw.admin("GET", "/admin/tenants").status_code == 200  # the admin key from that file
    assert sqlite_tables(tmp_path / "env.db")[0] >= TABLES


def test_tenants_keys_revocations_and_usage_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "aigw.db"
    with FakeOllama() as olla:
        config = write_config(tmp_path / "aigw.yaml", sqlite(db), olla)
        with serving(tmp_path, "--config", str(config)) as gw:
            created = gw.admin("POST", "/admin/tenants", {"name": "durable"})
            assert created.status_code == 201, created.text
            tenant = created.json()
            extra = gw.admin("POST", f"/admin/tenants/{tenant['id']}/keys", {})
            assert extra.status_code == 201, extra.text
            assert gw.admin("DELETE", f"/admin/keys/{extra.json()['id']}").status_code in (200, 204)
            assert gw.get("/v1/models", extra.json()["api_key"]).status_code == 401
            chat = httpx.post(
                gw.url + "/v1/chat/completions",
                json={"model": "llama", "messages": [{"role": "user", "content": "keep me"}]},
                headers={"authorization": f"Bearer {tenant['api_key']}"},
                timeout=10,
            )
            assert chat.status_code == 200, chat.text
            # stopped right after the response: a graceful stop must not lose the usage record
        with serving(tmp_path, "--config", str(config)) as again:
            models = again.get("/v1/models", tenant["api_key"])
            assert models.status_code == 200, models.text
            assert "llama" in {m["id"] for m in models.json()["data"]}
            assert again.get("/v1/models", extra.json()["api_key"]).status_code == 401, "revocation lost"
            usage = again.admin("GET", f"/admin/tenants/{tenant['id']}/usage")
            assert usage.status_code == 200, usage.text
            assert usage.json()["requests"] == 1, usage.json()
            assert usage.json()["completion_tokens"] == chat.json()["usage"]["completion_tokens"]


def cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def children(pid: int) -> dict[int, str]:
    """Direct child processes of ``pid`` with their command lines."""
    found: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            if (cmd := cmdline(kid)) is not None:
                found[kid] = cmd
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def requests_total(gw: Served, tenant_id: str) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "aigw_requests_total" and s.labels.get("tenant") == tenant_id
    )


def test_serve_with_two_workers(tmp_path: Path) -> None:
    olla = FakeOllama().start()
    config = write_config(tmp_path / "aigw.yaml", sqlite(tmp_path / "aigw.db"), olla)
    started: dict[int, str] = {}
    try:
        with serving(tmp_path, "--config", str(config), "--workers", "2") as gw:
            started = children(gw.proc.pid)  # the workers, and multiprocessing's resource tracker
            workers = [pid for pid, cmd in started.items() if "spawn_main" in cmd]
            assert len(workers) >= 2, f"expected two worker processes under {gw.proc.pid}: {workers}"
            created = gw.admin("POST", "/admin/tenants", {"name": "w"})
            assert created.status_code == 201, created.text
            key = created.json()["api_key"]
            deadline = time.monotonic() + KEY_SYNC_DEADLINE_S
            while gw.get("/v1/models", key).status_code != 200:
                assert time.monotonic() < deadline, "a new key never worked on /v1/models with two workers"
                time.sleep(0.05)
            for _ in range(2):  # fresh connections each time: either worker may answer
                assert gw.get("/readyz").status_code == 200
                assert gw.admin("GET", "/admin/tenants").status_code == 200
            # Metrics add up across workers whichever one answers the scrape (prometheus multiprocess files).
            tid = created.json()["id"]
            body = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}
            served = 0
            deadline = time.monotonic() + KEY_SYNC_DEADLINE_S
            while served < 10:  # fresh connections: spread over both workers
                r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
                if r.status_code == 401:  # the other worker has not synced the new key yet (≤ 1 s)
                    assert time.monotonic() < deadline, "the key never reached the second worker"
                    time.sleep(0.05)
                    continue
                assert r.status_code == 200, r.text
                served += 1
            assert [requests_total(gw, tid) for _ in range(4)] == [10.0] * 4
            code = gw.stop()
        assert code == 0, f"--workers 2 exited with {code} after SIGTERM:\n{gw.output()[-600:]}"
        left = [pid for pid in workers if alive(pid)]
        assert not left, f"worker processes outlived the server: {left}"
    finally:
        olla.stop()
        for pid, cmd in started.items():  # only the processes this test started (same pid, same command)
            if alive(pid) and cmdline(pid) == cmd:
                os.kill(pid, signal.SIGKILL)


def test_starts_with_an_unreachable_database_and_reports_not_ready(tmp_path: Path) -> None:
    config = write_config(tmp_path / "aigw.yaml", "postgresql+asyncpg://postgres@127.0.0.1:1/aigw")
    with serving(tmp_path, "--config", str(config)) as gw:
        assert gw.get("/healthz").status_code == 200
        ready = gw.get("/readyz")
        assert ready.status_code == 503, ready.text
        admin = gw.admin("POST", "/admin/tenants", {"name": "x"})  # a clear 503, not a hang or a 500
        assert admin.status_code == 503, admin.text
        assert set(admin.json()["error"]) == {"message", "type", "param", "code"}


# -- migrate ---------------------------------------------------------------------------------------------------


def pg_tables(url: str) -> tuple[set[str], str | None]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def read() -> tuple[set[str], str | None]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            names = {r["tablename"] for r in rows}
            version = (
                await conn.fetchval("SELECT version_num FROM alembic_version") if "alembic_version" in names else None
            )
            return names, version
        finally:
            await conn.close()

    return run_private(read())


@pytest.mark.postgres
def test_migrate_postgres_creates_tables_and_is_idempotent(empty_pg_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "aigw.yaml", empty_pg_url)
    assert pg_tables(empty_pg_url)[0] == set()
    first = run_aigw("migrate", "--config", str(config))
    assert first.returncode == 0, first.stderr
    tables, version = pg_tables(empty_pg_url)
    assert tables >= TABLES and version == head_revision()
    again = run_aigw("migrate", env=clean_env(AIGW_CONFIG=str(config)))  # the env var names the config too
    assert again.returncode == 0, again.stderr
    assert pg_tables(empty_pg_url) == (tables, version)
