"""The Kubernetes manifests (deploy/k8s/): every core resource validates against the Kubernetes
schemas (kubernetes-validate, strict, for the oldest and newest versions we support); the KEDA
ScaledObject against the subset of KEDA's schema it uses; and the whole is checked for what a
schema cannot see: a Deployment per process with probes and resources, budgets and autoscalers
that select real pods, only the gateway exposed, secrets from the Secret, complete environments,
the scrape annotations the Prometheus config and the alerts expect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.ai_worker.queue_metrics import broker_queue_keys
from tests.deploy.process_env import PROCESSES, check_process_env, image_env
from tests.deploy.tools import ROOT

K8S = ROOT / "deploy" / "k8s"
VERSIONS = ("1.29.0", "1.37.0")
SECRET = "chat-platform-secrets"
SECRET_KEYS = {"JWT_SECRET", "DATABASE_URL", "ADMIN_PASSWORD", "LLM_API_KEY"}
# Deployment -> the module it runs.
DEPLOYMENTS = {
    "gateway": "services.gateway",
    "chat": "services.chat",
    "analytics": "services.analytics",
    "ai-worker": "services.ai_worker",
    "relay": "services.chat.relay",
    "aggregator": "services.analytics.aggregator",
    "webhooks": "services.chat.webhooks",
}

# The part of KEDA v2's ScaledObject spec (keda.sh/v1alpha1) these manifests use, written from
# KEDA's documentation: unknown fields are refused, and trigger metadata values must be strings
# (KEDA rejects numbers there).
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STRING_MAP,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
# HPA behavior blocks are checked by the Kubernetes schema (autoscaling/v2) below.


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _all() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _documents(path)]


def _applied() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/k8s` creates."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in _documents(K8S / name)]


def _kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _all() if doc["kind"] == kind}


@pytest.mark.parametrize("version", VERSIONS)
def test_core_resources_validate_strictly(version: str) -> None:
    checked = 0
    for doc in _all():
        if doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")):
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 20


def test_scaled_object_validates_against_kedas_schema() -> None:
    scaled = _kind("ScaledObject")
    assert set(scaled) == {"ai-worker"}
    jsonschema.validate(scaled["ai-worker"], SCALED_OBJECT_SCHEMA)


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {path.name for path in K8S.glob("*.yaml")}
    assert set(kustomization["resources"]) == files - {"kustomization.yaml", "secret.example.yaml"}
    assert kustomization["namespace"] == "chat-platform"
    namespaces = {doc["metadata"].get("namespace", "chat-platform") for doc in _applied()}
    assert namespaces == {"chat-platform"}
    assert [image["name"] for image in kustomization["images"]] == ["chat-platform"]


def test_a_deployment_per_process_with_probes_resources_and_security() -> None:
    deployments = _kind("Deployment")
    assert set(deployments) == set(DEPLOYMENTS)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        process = PROCESSES[DEPLOYMENTS[name]]
        assert container["image"].split(":")[0] == "chat-platform", name
        assert container["command"] == ["python", "-m", process.module], name
        assert container["ports"][0]["containerPort"] == process.port, name
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] == process.port, (name, probe)
        # Every process has both probes, those without an API on their metrics port.
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        resources = container["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(process.port),
            "prometheus.io/job": process.job,
        }, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    # The worker finishes its running jobs on SIGTERM: its grace outlasts the task time limit.
    worker = deployments["ai-worker"]["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > 240


def test_every_deployment_has_a_disruption_budget_selecting_its_pods() -> None:
    deployments = _kind("Deployment")
    budgets = _kind("PodDisruptionBudget")
    assert set(budgets) == set(deployments)
    for name, budget in budgets.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        replicas = deployments[name]["spec"].get("replicas")
        if budget["spec"].get("minAvailable") is not None and replicas is not None:
            assert replicas > budget["spec"]["minAvailable"], f"{name} could never be drained"


def test_gateway_and_chat_scale_on_cpu_and_the_workers_on_the_queue() -> None:
    autoscalers = _kind("HorizontalPodAutoscaler")
    assert set(autoscalers) == {"gateway", "chat"}
    deployments = _kind("Deployment")
    for name, hpa in autoscalers.items():
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["spec"]["minReplicas"] >= 2
        assert "replicas" not in deployments[name]["spec"], f"{name}: the HPA owns replicas"
    scaled = _kind("ScaledObject")["ai-worker"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "ai-worker"
    assert "replicas" not in deployments["ai-worker"]["spec"]
    assert scaled["minReplicaCount"] >= 1  # the sweeper runs in the workers
    triggers = {trigger["type"]: trigger["metadata"] for trigger in scaled["triggers"]}
    config = _kind("ConfigMap")["chat-platform-config"]["data"]
    # The list the KEDA trigger measures is the one kombu queues the tasks in.
    assert triggers["redis"]["listName"] == broker_queue_keys(config["REDIS_PREFIX"])[0]
    assert triggers["redis"]["addressFromEnv"] in config
    assert config[triggers["redis"]["addressFromEnv"]].split(":")[0] == "redis"
    assert "ai_jobs_in_flight" in triggers["prometheus"]["query"]


def test_only_the_gateway_is_exposed() -> None:
    services = _kind("Service")
    assert set(services) == {"gateway", "chat", "analytics"}
    assert all(service["spec"]["type"] == "ClusterIP" for service in services.values())
    ingresses = _kind("Ingress")
    assert set(ingresses) == {"gateway"}
    backends = {
        path["backend"]["service"]["name"]
        for rule in ingresses["gateway"]["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {"gateway"}
    for name, service in services.items():
        port = service["spec"]["ports"][0]
        assert port["port"] == PROCESSES[DEPLOYMENTS[name]].port, name


def test_secrets_come_from_the_secret() -> None:
    config = _kind("ConfigMap")["chat-platform-config"]["data"]
    assert not SECRET_KEYS & set(config), "a secret in the ConfigMap"
    example = _kind("Secret")[SECRET]
    assert set(example["stringData"]) == SECRET_KEYS
    used = set()
    for doc in _applied():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                if "value" in variable:
                    assert variable["name"] not in SECRET_KEYS, variable["name"]
                    continue
                reference = variable["valueFrom"]["secretKeyRef"]
                assert reference["name"] == SECRET and reference["key"] == variable["name"]
                used.add(reference["key"])
    assert used == SECRET_KEYS
    assert all(doc["kind"] != "Secret" for doc in _applied())


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    config = _kind("ConfigMap")["chat-platform-config"]["data"]
    env = dict(image_env())
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "chat-platform-config"
        env.update(config)
    dummies = {
        "JWT_SECRET": "j" * 48,
        "DATABASE_URL": "postgresql://chat:pw@postgres.db.example:5432/chat",
        "ADMIN_PASSWORD": "admin-password",
        "LLM_API_KEY": "sk-test",
    }
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value") or dummies[variable["name"]]
    return env


@pytest.mark.parametrize("name", [*sorted(DEPLOYMENTS), "migrate"])
def test_container_environment_is_complete(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if name == "migrate":
        (container,) = _kind("Job")["migrate"]["spec"]["template"]["spec"]["containers"]
        process = PROCESSES["shared.db.migrate"]
        assert container["command"] == ["python", "-m", "shared.db.migrate"]
    else:
        (container,) = _kind("Deployment")[name]["spec"]["template"]["spec"]["containers"]
        process = PROCESSES[DEPLOYMENTS[name]]
    env = _container_env(container)
    check_process_env(
        process,
        env,
        monkeypatch,
        postgres_host="postgres.db.example",
        redis_host="redis",
        service_urls={"chat": "http://chat:8001", "analytics": "http://analytics:8002"},
    )
    assert ("JWT_SECRET" in env) == process.http, name
