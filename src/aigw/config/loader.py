"""Read YAML, expand ${VAR} / ${VAR:-default}, validate; report every error with its path and a fix.

Errors never echo values: a secret mistyped into the wrong key must not end up in a terminal or a log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aigw.config.model import Settings

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config file that cannot be used. ``problems`` holds one ``path: what. fix`` line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid config {source}:\n" + "\n".join(f"  - {p}" for p in problems))


def _expand(node: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _expand(v, env, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set. Set it, or write ${{{name}:-default}}")
        return ""

    expanded = _VAR.sub(sub, node)
    # A whole-value reference keeps YAML typing for the result (e.g. timeout_s: ${T:-30} is a number).
    if _VAR.fullmatch(node) and expanded != "":
        try:
            return yaml.safe_load(expanded) if not expanded.startswith(("{", "[")) else expanded
        except yaml.YAMLError:
            return expanded
    return expanded


_FIX = {
    "extra_forbidden": "remove it (unknown key) or check its spelling against docs/spec.md",
    "missing": "add this required key",
    "union_tag_invalid": "use one of the listed types",
    "union_tag_not_found": "add a 'type:' key",
}


def _loc(loc: tuple[int | str, ...], data: Any) -> str:
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if isinstance(node, dict) and part in node:
            out += f".{part}" if out else part
            node = node[part]
        # pydantic inserts the discriminator value (e.g. 'openai') into the location: skip it.
        elif isinstance(node, dict) and node.get("type") == part:
            continue
        else:
            out += f".{part}" if out else str(part)
            node = None
    return out or "(top level)"


def parse_settings(data: Any, env: Mapping[str, str] | None = None, source: str = "<config>") -> Settings:
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): must be a mapping of keys. See config.example.yaml"])
    problems: list[str] = []
    expanded = _expand(data, env, "", problems)
    unresolved = {p.partition(":")[0] for p in problems}
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            where = _loc(tuple(err["loc"]), expanded)
            if where in unresolved:
                continue  # already reported as an unset variable; its placeholder value is not the user's
            fix = _FIX.get(err["type"], "")
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "union_tag_invalid":  # pydantic's text quotes the bad value, which may be a secret
                msg = f"unknown type (expected one of {err.get('ctx', {}).get('expected_tags', '')})"
                where = f"{where}.type"
            problems.append(f"{where}: {msg}" + (f". Fix: {fix}" if fix else ""))
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    return settings


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read the file ({exc.strerror}). Check --config / AIGW_CONFIG"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(str(p), [f"{where}: not valid YAML. Fix the syntax there"]) from None
    return parse_settings(data, env, str(p))
