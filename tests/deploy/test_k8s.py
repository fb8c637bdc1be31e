"""deploy/k8s: every manifest parses and holds the invariants the gateway needs (probes on the contract's
endpoints, non-root read-only pods, the real CLI, a drain that fits the grace period, selectors that match), the
ConfigMap's config validates with the Secret's keys, and, when available, kubernetes-validate and
`kubectl kustomize` accept them."""

from __future__ import annotations

import importlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aigw.config import Settings, load_settings
from tests.deploy.support import (
    HEALTHZ,
    K8S,
    READYZ,
    find_tool,
    load_yaml_docs,
    missing_tool,
    parse_aigw,
)

IMAGE_UID = 10001  # the Dockerfile's USER
NOT_IN_KUSTOMIZATION = {"secret.example.yaml", "job-migrate.yaml"}  # applied by hand, on purpose
CONFIG_PATH = "/etc/aigw/config.yaml"

Manifest = dict[str, Any]


def _manifest_files() -> list[Path]:
    files = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
    return [f for f in files if f.name != "kustomization.yaml"]


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[Manifest]]:
    return {f.name: load_yaml_docs(f) for f in _manifest_files()}


def _all(manifests: dict[str, list[Manifest]]) -> list[Manifest]:
    return [doc for docs in manifests.values() for doc in docs]


def _get(manifests: dict[str, list[Manifest]], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in _all(manifests) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"want exactly one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod_specs(manifests: dict[str, list[Manifest]]) -> Iterator[tuple[str, Manifest]]:
    for doc in _all(manifests):
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def _containers(pod: Manifest) -> list[Manifest]:
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def _gateway(manifests: dict[str, list[Manifest]]) -> tuple[Manifest, Manifest, Manifest]:
    deployment = _get(manifests, "Deployment", "aigw")
    pod = deployment["spec"]["template"]["spec"]
    containers = [c for c in pod["containers"] if c["name"] == "aigw"]
    assert len(containers) == 1, "the Deployment needs one container named aigw"
    return deployment, pod, containers[0]


def _port_number(container: Manifest, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"no container port named {port!r}"
    return int(named[0])


def _argv(container: Manifest) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def test_every_manifest_parses_and_is_named(manifests: dict[str, list[Manifest]]) -> None:
    seen: set[tuple[str, str]] = set()
    for file, docs in manifests.items():
        assert docs, f"{file} is empty"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), f"{file}: apiVersion and kind are required"
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in seen, f"{file}: {key} defined twice"
            seen.add(key)
    kinds = {kind for kind, _ in seen}
    expected = {"Deployment", "Service", "ConfigMap", "Secret", "Job", "HorizontalPodAutoscaler"}
    assert expected | {"PodDisruptionBudget"} <= kinds


def test_kustomization_lists_every_manifest_but_the_hand_applied_ones() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kust["resources"])
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
    files = {f.name for f in _manifest_files()}
    assert listed == files - NOT_IN_KUSTOMIZATION, "add new manifests to kustomization.yaml (or to the exceptions)"
    assert [i["name"] for i in kust["images"]] == ["aigw"]


def test_probes_use_the_contract_endpoints_on_the_serving_port(manifests: dict[str, list[Manifest]]) -> None:
    _, _, c = _gateway(manifests)
    serve = parse_aigw(_argv(c))
    assert serve.subcommand == "serve"
    port = int(serve.options["--port"] or 0)
    assert port == 8080 and [p["containerPort"] for p in c["ports"]] == [port]
    want = {"startupProbe": HEALTHZ, "livenessProbe": HEALTHZ, "readinessProbe": READYZ}
    for probe, path in want.items():
        assert probe in c, f"the gateway needs a {probe}"
        get = c[probe]["httpGet"]
        assert get["path"] == path, f"{probe} should GET {path}"
        assert _port_number(c, get["port"]) == port, f"{probe} must hit the port the gateway listens on"
    # /readyz waits up to 2 s for the database and 2 s for Redis
    assert c["readinessProbe"]["timeoutSeconds"] >= 5
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "allow a slow first connection to start"


def test_commands_are_the_real_cli(manifests: dict[str, list[Manifest]]) -> None:
    _, pod, c = _gateway(manifests)
    serve = parse_aigw(_argv(c))
    assert serve.options.get("--host") == "0.0.0.0"
    assert serve.options.get("--workers") == "1", "one worker per pod: scale with replicas"
    assert serve.options.get("--config") == CONFIG_PATH
    migrations = [parse_aigw(_argv(i)) for i in pod.get("initContainers", [])]
    assert [m.subcommand for m in migrations] == ["migrate"], "the pod migrates before serving"
    job = _get(manifests, "Job", "aigw-migrate")["spec"]["template"]["spec"]
    assert parse_aigw(_argv(job["containers"][0])).subcommand == "migrate"
    assert job["restartPolicy"] in ("Never", "OnFailure")
    for name, spec in _pod_specs(manifests):
        for container in _containers(spec):
            cmd = parse_aigw(_argv(container))
            path = cmd.options.get("--config")
            assert path == CONFIG_PATH, f"{name}/{container['name']}: --config {path}"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volume = mounts.get(str(Path(CONFIG_PATH).parent))
            vols = {v["name"]: v for v in spec["volumes"]}
            assert volume in vols and vols[volume]["configMap"]["name"] == "aigw-config", f"{name}: config mount"
            keys = {i["key"]: i["path"] for i in vols[volume]["configMap"].get("items", [])}
            assert keys.get("config.yaml", "config.yaml") == Path(CONFIG_PATH).name
            assert container["image"].split(":")[0] == "aigw", "the image kustomization.yaml rewrites"
            refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
            assert refs == ["aigw-secrets"], f"{name}/{container['name']}: secrets come from aigw-secrets"


def test_pods_are_non_root_and_read_only(manifests: dict[str, list[Manifest]]) -> None:
    specs = list(_pod_specs(manifests))
    assert len(specs) == 2
    for name, spec in specs:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == IMAGE_UID, f"{name}: run as the image's uid"
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, f"{name}: the gateway needs no API token"
        vols = {v["name"]: v for v in spec["volumes"]}
        for c in _containers(spec):
            sc = c["securityContext"]
            where = f"{name}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc.get("privileged") is not True, where
            tmp = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in vols[tmp[0]], f"{where}: a writable /tmp (emptyDir)"
            res = c["resources"]
            assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"], where


def _configmap_settings(manifests: dict[str, list[Manifest]], tmp_path: Path) -> Settings:
    text = _get(manifests, "ConfigMap", "aigw-config")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    env = {k: str(v) for k, v in _get(manifests, "Secret", "aigw-secrets")["stringData"].items()}
    return load_settings(path, env=env)  # a missing ${VAR} without default fails here


def test_shutdown_drains_within_the_grace_period(manifests: dict[str, list[Manifest]], tmp_path: Path) -> None:
    deployment, pod, c = _gateway(manifests)
    drain = _configmap_settings(manifests, tmp_path).shutdown_drain_s
    pre = c["lifecycle"]["preStop"]
    if "sleep" in pre:
        pause = float(pre["sleep"]["seconds"])
    else:
        argv = pre["exec"]["command"]
        assert argv[0] == "sleep", f"preStop should sleep while load balancers drop the pod: {argv}"
        pause = float(argv[1])
    assert pause >= 5, "give endpoints/load balancers a few seconds to stop sending traffic"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= pause + drain + 10, f"{grace}s < preStop {pause}s + drain {drain}s + flush: SIGKILL"
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "roll out without losing capacity"


def test_service_hpa_and_pdb_select_the_gateway(manifests: dict[str, list[Manifest]]) -> None:
    deployment, _, c = _gateway(manifests)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = _get(manifests, "Service", "aigw")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert all(_port_number(c, p["targetPort"]) == 8080 for p in svc["spec"]["ports"])
    pdb = _get(manifests, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _get(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "at least two replicas, so one can drain or fail"
    assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"] if m["type"] == "Resource")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert c["resources"]["requests"]["cpu"], "CPU utilisation is relative to requests.cpu"


def test_secret_example_holds_placeholders_only(manifests: dict[str, list[Manifest]]) -> None:
    secret = _get(manifests, "Secret", "aigw-secrets")
    assert "data" not in secret, "stringData placeholders only, nothing encoded"
    values = secret["stringData"]
    assert {"AIGW_ADMIN_KEY", "AIGW_DATABASE_URL", "AIGW_REDIS_URL"} <= set(values)
    for key, value in values.items():
        assert value == "" or "REPLACE_ME" in value or ".example." in value, f"{key}: not an obvious placeholder"
        assert not value.startswith(("sk-", "AKIA")), f"{key} looks like a real credential"


def test_configmap_config_validates_with_the_secrets_keys(manifests: dict[str, list[Manifest]], tmp_path: Path) -> None:
    settings = _configmap_settings(manifests, tmp_path)
    env = _get(manifests, "Secret", "aigw-secrets")["stringData"]
    assert settings.database_url.startswith("postgresql+asyncpg://"), "replicas share PostgreSQL"
    assert settings.redis_url, "replicas share limits, breakers and budgets through Redis"
    assert settings.admin_key.get_secret_value() == env["AIGW_ADMIN_KEY"]


def test_kubernetes_schemas_accept_every_manifest(manifests: dict[str, list[Manifest]]) -> None:
    try:
        kv: Any = importlib.import_module("kubernetes_validate")
    except ImportError:
        missing_tool("kubernetes-validate (pip install kubernetes-validate) to check the manifests' schemas")
    for version in ("1.27.0", kv.utils.latest_version()):
        for file, docs in manifests.items():
            for doc in docs:
                try:
                    kv.validate(doc, version, strict=True)
                except Exception as exc:  # ValidationError and friends: report which file and version
                    pytest.fail(f"{file} {doc['kind']}/{doc['metadata']['name']} on Kubernetes {version}: {exc}")


def test_kustomize_renders_the_app() -> None:
    kubectl = find_tool("kubectl")
    if kubectl is None:
        missing_tool("kubectl (for `kubectl kustomize deploy/k8s`)", pip_installable=False)
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    app = [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    assert kinds == sorted(app)
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "aigw", f"{d['kind']} outside the aigw namespace"
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert {c["image"] for c in _containers(pod)} == {"aigw:0.1.0"}, "kustomize should pin the image tag"
