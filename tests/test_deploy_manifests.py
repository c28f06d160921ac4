"""The deployment manifests in deploy/ are valid: Kubernetes objects against the Kubernetes schemas
(kubernetes-validate ships them: offline), and the Serve configs (the file and the one embedded in the
RayService) against Ray's own schema, when the `ray` extra is installed."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"


def _documents(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_plain_kubernetes_manifests_validate():
    import kubernetes_validate

    docs = _documents(K8S / "arserve.yaml")
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any error
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    probes = pod["containers"][0]
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] > 10  # longer than the server's drain


def test_a_broken_manifest_is_caught():
    """The check can fail: a misspelt field is an error under strict validation."""
    import kubernetes_validate

    doc = next(d for d in _documents(K8S / "arserve.yaml") if d["kind"] == "Service")
    doc["spec"]["portz"] = doc["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.ray
@pytest.mark.parametrize("source", ["deploy/ray/serve.yaml", "deploy/k8s/rayservice.yaml"])
def test_serve_configs_follow_rays_schema(source):
    pytest.importorskip("ray", reason="the `ray` extra is not installed")
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((ROOT / source).read_text())
    if doc.get("kind") == "RayService":
        doc = yaml.safe_load(doc["spec"]["serveConfigV2"])
    config = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(doc)
    (app,) = config.applications
    assert app.import_path == "app.ray_serve:app"
    (deployment,) = app.deployments
    assert deployment.max_ongoing_requests > 32  # above ARSERVE_MAX_CONCURRENT_STREAMS: the app's 429 first
