"""The Kubernetes manifests agree with the code they run: every setting a Deployment
sets (its env and the shared ConfigMap) is one its settings class reads, every
secret file it names is mounted from the Secret, its probes and the Prometheus path
are routes the app has, and the gateway's Ingress body limit is the app's. A typo in
an env var name would otherwise be ignored in silence (the settings ignore unknown
variables)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings
from starlette.routing import Match

from gateway.app import create_app
from gateway.settings import GatewaySettings
from services.community.settings import CommunitySettings
from services.member.settings import MemberSettings
from services.tagging.settings import TaggingSettings

K8S = Path(__file__).resolve().parents[2] / "k8s"
SETTINGS: dict[str, type[BaseSettings]] = {
    "services.member": MemberSettings,
    "services.tagging": TaggingSettings,
    "services.community": CommunitySettings,
    "gateway": GatewaySettings,
}


def base_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / "base" / name).read_text()) if d)
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def env_names(settings: type[BaseSettings]) -> set[str]:
    """The environment variables a settings class reads."""
    prefix = settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            names.update(str(c).upper() for c in choices)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "Deployment"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def test_every_component_has_a_deployment_and_the_kustomization_lists_every_file():
    docs = base_documents()
    commands = {container(d)["command"][-1] for d in deployments(docs)}
    assert commands == set(SETTINGS)
    listed = set(yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}


def test_every_setting_a_deployment_sets_is_read_by_its_component():
    docs = base_documents()
    shared = one(docs, "ConfigMap", "pond-config")["data"]
    for deployment in deployments(docs):
        spec = container(deployment)
        reads = env_names(SETTINGS[spec["command"][-1]])
        own = {e["name"] for e in spec.get("env", [])}
        # The shared ConfigMap holds what every service reads; a component may ignore
        # a key that is not its own (the gateway has no phone key), but not its env.
        assert own <= reads, (deployment["metadata"]["name"], sorted(own - reads))
        assert {"POND_MODE", "REDIS_URL", "POND_AUTH_SECRET_FILE"} <= reads & set(shared)


def test_every_secret_file_a_deployment_names_is_mounted():
    docs = base_documents()
    shared = one(docs, "ConfigMap", "pond-config")["data"]
    for deployment in deployments(docs):
        pod = deployment["spec"]["template"]["spec"]
        spec = container(deployment)
        mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
        files = set()
        for volume in pod["volumes"]:
            if "secret" in volume:
                files.update(f"{mounts[volume['name']]}/{item['path']}"
                             for item in volume["secret"]["items"])
        env = {e["name"]: e.get("value") for e in spec.get("env", [])}
        reads = env_names(SETTINGS[spec["command"][-1]])
        wanted = {v for k, v in {**shared, **env}.items()
                  if k.endswith("_FILE") and k in reads and v}
        if spec["command"][-1] == "gateway":  # reads no phone key
            wanted.discard(shared["POND_PHONE_KEY_FILE"])
        assert wanted <= files, (deployment["metadata"]["name"], sorted(wanted - files))


def test_the_gateway_manifest_matches_the_app():
    docs = base_documents()
    deployment = one(docs, "Deployment", "gateway")
    spec = container(deployment)
    env = {e["name"]: e["value"] for e in spec["env"]}
    settings = GatewaySettings(**{k: v for k, v in {
        "gateway_port": env["POND_GATEWAY_PORT"],
        "max_body_bytes": env["POND_MAX_BODY_BYTES"]}.items()})
    app = create_app(settings)

    def answers_get(path: str) -> bool:
        scope = {"type": "http", "path": path, "root_path": "", "method": "GET", "headers": []}
        return any(r.matches(scope)[0] is Match.FULL for r in app.router.routes)

    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports["http"] == settings.gateway_port
    for probe in ("readinessProbe", "livenessProbe"):
        assert answers_get(spec[probe]["httpGet"]["path"]), probe
        assert spec[probe]["httpGet"]["port"] == "http"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert answers_get(annotations["prometheus.io/path"])
    assert not answers_get("/no-such-route")
    assert int(annotations["prometheus.io/port"]) == settings.gateway_port
    assert env["POND_MEMBER_TARGET"] == "member:50051"
    community = one(docs, "Service", "community")["spec"]["ports"][0]["port"]
    assert env["POND_COMMUNITY_TARGET"] == f"community:{community}"

    ingress = one(docs, "Ingress", "gateway")
    limit = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    number, unit = re.fullmatch(r"(\d+)([km]?)", limit).groups()  # type: ignore[union-attr]
    assert int(number) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit] == settings.max_body_bytes
    assert ingress["spec"]["tls"], "the Ingress serves TLS"
    (rule,) = ingress["spec"]["rules"]
    paths = {p["path"] for p in rule["http"]["paths"]}
    assert paths == {"/v1"}, "only the API is public (no /metrics, /docs, probes)"
    service = one(docs, "Service", "gateway")
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == service["metadata"]["name"]
    hpa = one(docs, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway"
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the count"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_the_production_overlay_builds():
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / "production")],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert {d["metadata"]["namespace"] for d in docs} == {"pond"}
    gateway = container(one(docs, "Deployment", "gateway"))
    assert [e["name"] for e in gateway["env"]].count("POND_WECHAT_APP_ID") == 1
