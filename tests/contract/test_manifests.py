"""The cluster manifests (manifests/) render with kustomize and validate against Kubernetes' schemas.

Rendering uses a real kustomize when one is installed (``kubectl kustomize`` or ``kustomize
build``); otherwise a small renderer below applies the subset of kustomize the manifests use
(resources, namespace, labels, images, JSON6902 patches). When both exist, a test checks that
they agree, so the fallback cannot drift. Validation is offline: the ``kubernetes-validate``
package ships the OpenAPI schemas, pinned here to one Kubernetes version.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.support.paths import REPO

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate (the 'test' extra)"
)

#: The Kubernetes version the manifests are validated against (strict: unknown fields fail).
K8S_VERSION = "1.32.0"


MANIFESTS = REPO / "manifests"
BASE = MANIFESTS / "base"
OVERLAY = MANIFESTS / "overlays" / "example"
SECRET_TEMPLATES = MANIFESTS / "secret-templates"
OVERLAY_NAMESPACE = "kubeflow-user-example-com"
PLACEHOLDER = "REPLACE_ME"

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
SERVER_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition"}


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


KUSTOMIZE = _kustomize_command()


def render_with_kustomize(path: Path) -> list[dict]:
    assert KUSTOMIZE is not None
    out = subprocess.run([*KUSTOMIZE, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(KUSTOMIZE)} {path} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _load_kustomization(path: Path) -> dict:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (path / name).is_file():
            return yaml.safe_load((path / name).read_text()) or {}
    raise FileNotFoundError(f"{path}: no kustomization.yaml")


def _containers(pod_spec: dict) -> Iterator[dict]:
    yield from pod_spec.get("initContainers", []) or []
    yield from pod_spec.get("containers", []) or []


def pod_spec_of(doc: dict) -> dict | None:
    """The PodSpec inside a workload object (None for other kinds)."""
    kind = doc.get("kind")
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in WORKLOAD_KINDS:
        return doc["spec"]["template"]["spec"]
    if kind == "Pod":
        return doc["spec"]
    return None


def _json_pointer_apply(doc: Any, op: dict) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    target = doc
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
    last = parts[-1]
    if op["op"] in ("add", "replace"):
        if isinstance(target, list):
            if last == "-":
                target.append(op["value"])
            elif op["op"] == "add":
                target.insert(int(last), op["value"])
            else:
                target[int(last)] = op["value"]
        else:
            target[last] = op["value"]
    elif op["op"] == "remove":
        del target[int(last) if isinstance(target, list) else last]
    else:  # pragma: no cover - not used by the manifests
        raise NotImplementedError(f"JSON6902 op {op['op']!r}")


def render_fallback(path: Path) -> list[dict]:
    """Render the subset of kustomize these manifests use, in pure Python."""
    k = _load_kustomization(path)
    docs: list[dict] = []
    for res in k.get("resources", []):
        target = (path / res).resolve()
        if target.is_dir():
            docs.extend(render_fallback(target))
        else:
            docs.extend(d for d in yaml.safe_load_all(target.read_text()) if d)
    docs = copy.deepcopy(docs)

    for entry in k.get("labels", []):
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeSelectors") or entry.get("includeTemplates"):  # pragma: no cover
                raise NotImplementedError("labels with selectors/templates")
    for key, value in (k.get("commonLabels") or {}).items():  # pragma: no cover - unused today
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {})[key] = value
            spec = pod_spec_of(doc)
            if spec is not None:
                doc["spec"].setdefault("selector", {}).setdefault("matchLabels", {})[key] = value
                doc["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {})[key] = value

    namespace = k.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
            if doc["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                for subject in doc.get("subjects", []):
                    if subject.get("kind") == "ServiceAccount":
                        subject["namespace"] = namespace

    for image in k.get("images", []):
        for doc in docs:
            spec = pod_spec_of(doc)
            for container in _containers(spec or {}):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    new_name = image.get("newName", name)
                    new_tag = image.get("newTag", tag)
                    container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name

    for patch in k.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load(patch["patch"])
        for doc in docs:
            if doc["kind"] == target.get("kind") and doc["metadata"]["name"] == target.get("name"):
                for op in ops:
                    _json_pointer_apply(doc, op)
    return docs


def render(path: Path) -> list[dict]:
    return render_with_kustomize(path) if KUSTOMIZE else render_fallback(path)


@pytest.fixture(scope="module")
def base_docs() -> list[dict]:
    return render(BASE)


@pytest.fixture(scope="module")
def overlay_docs() -> list[dict]:
    return render(OVERLAY)


def by_kind_name(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def workloads(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    for doc in docs:
        spec = pod_spec_of(doc)
        if spec is not None:
            yield doc, spec


# ---------------------------------------------------------------------------------------------
# Rendering and schema validation
# ---------------------------------------------------------------------------------------------
def test_base_renders_the_expected_objects(base_docs):
    objects = set(by_kind_name(base_docs))
    expected = {
        ("Deployment", "minio"), ("PersistentVolumeClaim", "minio-data"), ("Service", "minio"),
        ("Job", "minio-setup"),
        ("StatefulSet", "postgres"), ("Service", "postgres"),
        ("Deployment", "mlflow"), ("Service", "mlflow"),
        ("ConfigMap", "kfp-launcher"), ("ConfigMap", "campseg-endpoints"),
        ("ServiceAccount", "campseg-services"), ("ServiceAccount", "campseg-pipeline-runner"),
        ("Role", "campseg-pipeline-runner"), ("RoleBinding", "campseg-pipeline-runner"),
    }
    assert expected <= objects, f"missing: {sorted(expected - objects)}"
    for doc in base_docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "campseg", doc["metadata"]


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_rendered_objects_validate_against_kubernetes_schemas(which, base_docs, overlay_docs):
    docs = base_docs if which == "base" else overlay_docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_secret_templates_validate_as_secrets():
    for path in sorted(SECRET_TEMPLATES.glob("*.env")):
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": path.stem}, "stringData": read_env(path)}
        kubernetes_validate.validate(secret, K8S_VERSION, strict=True)


def test_an_invalid_manifest_fails_validation():
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "broken"},
        "spec": {"selector": {"matchLabels": {"app": "x"}},
                 "template": {"metadata": {"labels": {"app": "x"}}, "spec": {}}},
    }
    with pytest.raises(kubernetes_validate.ValidationError, match="containers"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    # Strict mode also rejects a misspelt field that a lenient check would ignore.
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"] = {"containers": [{"name": "c", "image": "i", "imagePolicy": "x"}]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_a_broken_file_in_the_base_fails_the_render_and_validation(tmp_path):
    """The same pipeline (render, then validate) catches a bad manifest added to the base."""
    work = tmp_path / "base"
    shutil.copytree(BASE, work)
    mlflow = [d for d in yaml.safe_load_all((work / "mlflow.yaml").read_text()) if d]
    del mlflow[0]["spec"]["template"]["spec"]["containers"]
    (work / "mlflow.yaml").write_text(yaml.safe_dump_all(mlflow))
    docs = render(work)
    broken = by_kind_name(docs)[("Deployment", "mlflow")]
    with pytest.raises(kubernetes_validate.ValidationError, match="containers"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.skipif(KUSTOMIZE is None, reason="no kustomize or kubectl: nothing to compare with")
@pytest.mark.parametrize("path", [BASE, OVERLAY], ids=["base", "overlay"])
def test_fallback_renderer_agrees_with_kustomize(path):
    assert by_kind_name(render_fallback(path)) == by_kind_name(render_with_kustomize(path))


# ---------------------------------------------------------------------------------------------
# Secrets: templates only, no values
# ---------------------------------------------------------------------------------------------
def read_env(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            pairs[key] = value
    return pairs


def secret_templates() -> dict[str, dict[str, str]]:
    return {p.stem: read_env(p) for p in sorted(SECRET_TEMPLATES.glob("*.env"))}


#: Values that look like a credential someone meant to use (or a well-known default).
SUSPICIOUS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),                                  # AWS access key id
    re.compile(r"(?i)\b(minioadmin|minio123|changeme|hunter2|s3cr3t)\b"),
    # a key named like a password/secret/token given a literal value (not a reference)
    re.compile(r"(?i)\b\w*(password|passwd|secret|token)[ \t]*[:=][ \t]*[\"']?(?!REPLACE_ME|true\b|false\b)[^\s\"'${}]{4,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


def looks_like_a_key(word: str) -> bool:
    """A long random-looking token (base64/hex): upper, lower and digits, not a path."""
    return (len(word) >= 24 and not word.startswith("/") and any(c.isdigit() for c in word)
            and any(c.isupper() for c in word) and any(c.islower() for c in word))


def test_secret_templates_hold_only_placeholders():
    templates = secret_templates()
    assert set(templates) == {"minio-root", "campseg-s3-credentials", "postgres-credentials"}
    for name, pairs in templates.items():
        assert pairs, name
        for key, value in pairs.items():
            assert value == PLACEHOLDER, f"{name}.env: {key} must be {PLACEHOLDER}, not a value"


def test_no_secret_objects_and_no_credential_values_in_manifests(base_docs, overlay_docs):
    for doc in base_docs + overlay_docs:
        assert doc["kind"] != "Secret", "Secrets are created by hand from secret-templates/"
    for doc, spec in workloads(base_docs):
        for container in _containers(spec):
            for env in container.get("env", []):
                if re.search(r"(?i)password|secret|access_key|token", env["name"]):
                    assert "valueFrom" in env, f"{doc['metadata']['name']}: {env['name']} has a literal value"
    for path in sorted(MANIFESTS.rglob("*")):
        if path.is_file():
            text = path.read_text()
            # Prose (README.md) may say "Secret: ..."; assignments are checked in config files.
            patterns = SUSPICIOUS if path.suffix != ".md" else [SUSPICIOUS[0], SUSPICIOUS[3]]
            for pattern in patterns:
                match = pattern.search(text)
                assert not match, f"{path.relative_to(REPO)}: {match.group(0)!r} looks like a credential"
            for word in re.findall(r"[A-Za-z0-9+/=_-]+", text):
                assert not looks_like_a_key(word), f"{path.relative_to(REPO)}: {word!r} looks like a key"


def test_every_secret_reference_has_a_template(base_docs):
    templates = secret_templates()
    referenced: set[tuple[str, str]] = set()
    for _doc, spec in workloads(base_docs):
        for container in _containers(spec):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add((ref["name"], ref["key"]))
    launcher = yaml.safe_load(by_kind_name(base_docs)[("ConfigMap", "kfp-launcher")]["data"]["providers"])
    secret_ref = launcher["s3"]["default"]["credentials"]["secretRef"]
    referenced |= {(secret_ref["secretName"], secret_ref["accessKeyKey"]),
                   (secret_ref["secretName"], secret_ref["secretKeyKey"])}
    for name, key in sorted(referenced):
        assert name in templates, f"Secret {name!r} is used but has no template"
        assert key in templates[name], f"Secret {name!r} key {key!r} is used but not in its template"
    # Every template key is used somewhere: no stale templates.
    assert {(n, k) for n, pairs in templates.items() for k in pairs} == referenced


# ---------------------------------------------------------------------------------------------
# Pod hygiene: requests, probes, non-root
# ---------------------------------------------------------------------------------------------
def test_every_container_has_requests_and_limits(base_docs):
    for doc, spec in workloads(base_docs):
        for container in _containers(spec):
            resources = container.get("resources", {})
            where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(section, {})), f"{where}: {section}"


def test_servers_have_readiness_probes(base_docs):
    servers = [(d, s) for d, s in workloads(base_docs) if d["kind"] in SERVER_KINDS]
    assert len(servers) == 3
    for doc, spec in servers:
        for container in spec["containers"]:
            assert "readinessProbe" in container, f"{doc['metadata']['name']}/{container['name']}"


def test_nothing_runs_as_root(base_docs):
    for doc, spec in workloads(base_docs):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, doc["metadata"]["name"]
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", doc["metadata"]["name"]
        for container in _containers(spec):
            ctx = container.get("securityContext", {})
            where = f"{doc['metadata']['name']}/{container['name']}"
            assert ctx.get("runAsNonRoot", True) is True, where
            assert ctx.get("runAsUser", pod.get("runAsUser")) not in (None, 0), where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not ctx.get("privileged"), where


def test_server_pods_do_not_mount_api_tokens(base_docs):
    for doc, spec in workloads(base_docs):
        assert spec.get("automountServiceAccountToken") is False, doc["metadata"]["name"]
        assert spec.get("serviceAccountName") == "campseg-services", doc["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# The pieces fit together
# ---------------------------------------------------------------------------------------------
def test_kfp_launcher_points_the_pipeline_root_at_minio(base_docs):
    objects = by_kind_name(base_docs)
    data = objects[("ConfigMap", "kfp-launcher")]["data"]
    root = data["defaultPipelineRoot"]
    assert root.startswith("s3://"), root
    bucket = root[len("s3://"):].split("/")[0]
    providers = yaml.safe_load(data["providers"])
    default = providers["s3"]["default"]
    service = objects[("Service", "minio")]
    s3_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "s3")
    assert default["endpoint"] == f"{service['metadata']['name']}:{s3_port}"
    assert default["disableSSL"] is True and default["credentials"]["fromEnv"] is False
    setup = objects[("Job", "minio-setup")]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert bucket in setup, f"the minio-setup Job does not create the pipeline-root bucket {bucket!r}"
    # The launcher may read exactly that Secret and ConfigMap.
    rules = objects[("Role", "campseg-pipeline-runner")]["rules"]
    secret_rule = next(r for r in rules if r["resources"] == ["secrets"])
    assert default["credentials"]["secretRef"]["secretName"] in secret_rule["resourceNames"]
    cm_rule = next(r for r in rules if r["resources"] == ["configmaps"])
    assert "kfp-launcher" in cm_rule["resourceNames"]


def test_mlflow_uses_postgres_and_minio(base_docs):
    objects = by_kind_name(base_docs)
    container = objects[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    backend = next(a for a in args if a.startswith("--backend-store-uri="))
    assert backend.startswith("--backend-store-uri=postgresql://")
    assert "@postgres:5432/" in backend and "$(POSTGRES_PASSWORD)" in backend
    assert "--artifacts-destination=s3://mlflow/" in args
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio:9000"
    setup = objects[("Job", "minio-setup")]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "mlflow" in setup.split("for bucket in ")[1].split(";")[0]
    postgres = objects[("StatefulSet", "postgres")]
    assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_overlay_sets_the_namespace_everywhere(overlay_docs):
    for doc in overlay_docs:
        assert doc["metadata"].get("namespace") == OVERLAY_NAMESPACE, (doc["kind"], doc["metadata"]["name"])
    binding = by_kind_name(overlay_docs)[("RoleBinding", "campseg-pipeline-runner")]
    assert binding["subjects"][0]["namespace"] == OVERLAY_NAMESPACE
    mlflow = by_kind_name(overlay_docs)[("Deployment", "mlflow")]
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["image"].startswith("registry.example.com/")


def test_images_are_pinned(base_docs):
    for doc, spec in workloads(base_docs):
        for container in _containers(spec):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{doc['metadata']['name']}: {image} is not pinned"
