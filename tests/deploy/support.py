"""Helpers for the deployment tests: repository paths, YAML and Dockerfile reading, the real CLI's flags, and
finding optional tools (docker compose, hadolint, kubectl, kubernetes-validate).

An optional tool that is missing skips its test with the reason (shown by ``-ra``); with
``AIGW_REQUIRE_DEPLOY_TOOLS=1`` it fails the test instead, so a CI that installs the tools cannot silently lose them
(kubectl, which pip cannot install, only ever skips).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
DOCKER_CONFIG = ROOT / "deploy" / "aigw.docker.yaml"
OTEL_COLLECTOR = ROOT / "deploy" / "otel-collector.yaml"

# The readiness/liveness paths of the contract.
HEALTHZ = "/healthz"
READYZ = "/readyz"


def missing_tool(what: str, *, pip_installable: bool = True) -> NoReturn:
    """Skip (loudly) or, with AIGW_REQUIRE_DEPLOY_TOOLS=1, fail: ``what`` says which tool and how to get it.
    A tool the project cannot install with pip (kubectl) only ever skips."""
    if pip_installable and os.environ.get("AIGW_REQUIRE_DEPLOY_TOOLS") == "1":
        pytest.fail(f"required deployment tool missing: {what}")
    pytest.skip(f"NOT CHECKED: {what}")


def find_tool(name: str) -> str | None:
    """``name`` on PATH, or next to this interpreter (a pip-installed binary in the venv that runs the tests)."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(name)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a YAML document that is not a mapping"
    return docs


# ---- the real CLI --------------------------------------------------------------------------------------------------


@functools.cache
def cli_flags(command: str) -> frozenset[str]:
    """The long options ``aigw COMMAND --help`` prints, from the installed CLI in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "aigw", command, "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, f"aigw {command} --help failed: {proc.stderr}"
    flags = frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", proc.stdout))
    assert "--config" in flags, f"unexpected help output for aigw {command}: {proc.stdout}"
    return flags


@dataclass
class AigwCommand:
    """``aigw SUBCOMMAND --flag value ...`` split into the subcommand and its options (value None for a switch)."""

    subcommand: str
    options: dict[str, str | None] = field(default_factory=dict)


def parse_aigw(argv: list[str]) -> AigwCommand:
    """Parse an argv that starts with ``aigw`` (or a path ending in /aigw); every option must be a real flag."""
    assert argv, "empty command"
    assert Path(argv[0]).name == "aigw", f"not an aigw command: {argv}"
    assert len(argv) >= 2, f"no subcommand: {argv}"
    sub = argv[1]
    known = cli_flags(sub)
    options: dict[str, str | None] = {}
    rest = argv[2:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        assert arg.startswith("--"), f"unexpected positional argument {arg!r} in {argv}"
        name, eq, value = arg.partition("=")
        assert name in known, f"`aigw {sub}` has no flag {name} (its flags: {sorted(known)})"
        if eq:
            options[name] = value
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            options[name] = rest[i + 1]
            i += 1
        else:
            options[name] = None
        i += 1
    return AigwCommand(sub, options)


# ---- Dockerfile ----------------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to (-1: before the first FROM)


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with continuations joined; comments and parser directives dropped."""
    out: list[Instruction] = []
    stage = -1
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD; fails for the shell form."""
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec form: {args}"
    assert all(isinstance(v, str) for v in value)
    return [str(v) for v in value]


def env_assignments(args: str) -> dict[str, str]:
    """``ENV A=1 B="two"`` (the key=value form)."""
    out: dict[str, str] = {}
    for token in shlex.split(args):
        key, eq, value = token.partition("=")
        assert eq, f"use ENV KEY=VALUE, not the legacy form: {args}"
        out[key] = value
    return out


def expand_defaults(text: str, env: Mapping[str, str]) -> str:
    """``${VAR}``, ``${VAR:-default}`` and ``$VAR`` as sh (and compose) expand them, from ``env``."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        default = m.group(2)
        value = env.get(name, "")
        return default if (default is not None and value == "") else value

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, text)


# ---- .dockerignore -------------------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.index("]", i)
            out += pattern[i : j + 1]
            i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(rel_path: str, ignore_text: str) -> bool:
    """Whether Docker leaves ``rel_path`` out of the build context: the last pattern matching the path or one of
    its parent directories wins; ``!`` re-includes."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in ignore_text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.strip("/") or "."
        rules.append((negate, _glob_regex(pattern)))
    parts = rel_path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def files_under(path: Path) -> Iterator[Path]:
    """The source files under ``path`` (not the local byproducts: bytecode, egg-info)."""
    if path.is_file():
        yield path
        return
    for p in sorted(path.rglob("*")):
        byproduct = p.suffix == ".pyc" or any(part == "__pycache__" or part.endswith(".egg-info") for part in p.parts)
        if p.is_file() and not byproduct:
            yield p
