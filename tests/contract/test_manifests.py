"""The cluster manifests (manifests/) render with kustomize and validate against Kubernetes' schemas.

Rendering uses a real kustomize when one is installed (``kubectl kustomize`` or ``kustomize
build``); otherwise a small renderer below applies the subset of kustomize the manifests use
(resources, components, namespace, labels, images, configMapGenerator, JSON6902 patches,
replacements). When both exist, a test checks that they agree, so the fallback cannot drift.
Validation is offline: the ``kubernetes-validate`` package ships the OpenAPI schemas of the
built-in kinds, pinned here to one Kubernetes version; Istio's AuthorizationPolicy and
PeerAuthentication are validated strictly against a schema of Istio's documented
security.istio.io/v1 API written for this project, ``tests/contract/schemas/istio-security-v1.json``.
"""

from __future__ import annotations

import copy
import json
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
jsonschema = pytest.importorskip("jsonschema", reason="installed with kubernetes-validate")

#: The Kubernetes version the manifests are validated against (strict: unknown fields fail).
K8S_VERSION = "1.32.0"


MANIFESTS = REPO / "manifests"
BASE = MANIFESTS / "base"
OVERLAY = MANIFESTS / "overlays" / "example"
ISTIO_COMPONENT = MANIFESTS / "components" / "istio"
SECRET_TEMPLATES = MANIFESTS / "secret-templates"
ISTIO_SCHEMAS = Path(__file__).parent / "schemas" / "istio-security-v1.json"
OVERLAY_NAMESPACE = "kubeflow-user-example-com"
PLACEHOLDER = "REPLACE_ME"
#: What the base holds where the overlay writes its namespace (FQDNs, Istio principals).
NAMESPACE_PLACEHOLDER = "NAMESPACE"
ISTIO_KINDS = {"AuthorizationPolicy", "PeerAuthentication"}

#: Objects KFP itself owns in the namespace "kubeflow" (standalone and multi-user installs,
#: MinIO/SeaweedFS/MySQL variants) or writes into profile namespaces. Ours must not reuse these
#: names, except kfp-launcher, which KFP reads by that name (see docs/cluster.md).
KFP_OWN_NAMES = {
    "minio", "minio-service", "minio-pvc", "minio-artifact", "mlpipeline-minio-artifact",
    "seaweedfs", "seaweedfs-service", "mysql", "mysql-pv-claim", "mysql-secret", "postgres",
    "postgresql", "ml-pipeline", "ml-pipeline-ui", "ml-pipeline-ui-artifact",
    "ml-pipeline-visualizationserver", "ml-pipeline-persistenceagent",
    "ml-pipeline-scheduledworkflow", "ml-pipeline-viewer-crd", "ml-pipeline-config",
    "ml-pipeline-minio", "ml-pipeline-mysql", "metadata-grpc-deployment", "metadata-grpc-service",
    "metadata-grpc-configmap", "metadata-envoy-deployment", "metadata-writer", "cache-server",
    "cache-deployer-deployment", "pipeline-install-config", "pipeline-runner",
    "kubeflow-pipelines-profile-controller", "workflow-controller",
    "workflow-controller-configmap", "artifact-repositories", "kfp-launcher", "mlflow",
    "default-editor", "default-viewer", "ns-owner-access-istio",
}
INTENDED_KFP_NAMES = {"kfp-launcher"}

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


def _field_path(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def _get_field(doc: Any, path: str) -> Any:
    for part in _field_path(path):
        doc = doc[part]
    return doc


def _set_field(doc: Any, path: str, value: Any) -> None:
    parts = _field_path(path)
    for part in parts[:-1]:
        doc = doc[part]
    doc[parts[-1]] = value


def _apply_replacements(docs: list[dict], replacements: list[dict]) -> None:
    """kustomize's ``replacements`` (source by kind/name, targets by kind/name, delimiter/index)."""
    for rep in replacements:
        assert "path" not in rep, "replacements from a file: not supported by the fallback"
        src = rep["source"]
        source = next(d for d in docs
                      if d["kind"] == src["kind"] and d["metadata"]["name"] == src["name"])
        value = _get_field(source, src.get("fieldPath", "metadata.name"))
        for target in rep["targets"]:
            sel = target["select"]
            for doc in docs:
                if doc["kind"] != sel["kind"] or doc["metadata"]["name"] != sel.get("name", doc["metadata"]["name"]):
                    continue
                for path in target["fieldPaths"]:
                    options = target.get("options", {})
                    new = value
                    if "delimiter" in options:
                        parts = str(_get_field(doc, path)).split(options["delimiter"])
                        parts[options.get("index", 0)] = value
                        new = options["delimiter"].join(parts)
                    _set_field(doc, path, new)


def _generate_config_maps(path: Path, k: dict) -> list[dict]:
    docs = []
    for gen in k.get("configMapGenerator", []):
        assert gen.get("options", {}).get("disableNameSuffixHash"), "hash suffixes: not in the fallback"
        data = {}
        for entry in gen.get("files", []):
            key, _, name = entry.rpartition("=")
            data[key or Path(name).name] = (path / name).read_text()
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]},
                     "data": data})
    return docs


def _apply_labels(docs: list[dict], k: dict) -> None:
    for entry in k.get("labels", []):
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeSelectors") or entry.get("includeTemplates"):  # pragma: no cover
                raise NotImplementedError("labels with selectors/templates")


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
    # A component adds its resources, then runs its own transformers over everything so far,
    # before the including kustomization's transformers (namespace, replacements, ...).
    for comp in k.get("components", []):
        comp_path = (path / comp).resolve()
        ck = _load_kustomization(comp_path)
        assert ck.get("kind") == "Component", comp_path
        for res in ck.get("resources", []):
            docs.extend(d for d in yaml.safe_load_all((comp_path / res).read_text()) if d)
        docs.extend(_generate_config_maps(comp_path, ck))
        _apply_labels(docs, ck)
    docs.extend(_generate_config_maps(path, k))

    _apply_labels(docs, k)
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
    _apply_replacements(docs, k.get("replacements", []))  # kustomize runs them last
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


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ---------------------------------------------------------------------------------------------
# Istio kinds: validated strictly against a schema of Istio's documented security.istio.io/v1 API
# ---------------------------------------------------------------------------------------------
def _strict(schema: Any) -> Any:
    """Reject unknown fields like kubectl's strict field validation: additionalProperties false
    on every object schema that lists its properties (unless it preserves unknown fields)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _istio_schemas() -> dict[str, dict]:
    return json.loads(ISTIO_SCHEMAS.read_text())["kinds"]


def validate_istio(doc: dict) -> None:
    """Validate an Istio security object: apiVersion, metadata, spec against the CRD schema, and
    the CRD's CEL rules the manifests depend on (ports are numbers 1-65535)."""
    entry = _istio_schemas()[doc["kind"]]
    if doc.get("apiVersion") != f"{entry['group']}/{entry['version']}":
        raise jsonschema.ValidationError(f"apiVersion {doc.get('apiVersion')!r}: use {entry['group']}/v1")
    meta = doc.get("metadata", {})
    if not meta.get("name") or set(meta) - {"name", "namespace", "labels", "annotations"}:
        raise jsonschema.ValidationError(f"metadata {meta!r}")
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.Draft7Validator(_strict(entry["openAPIV3Schema"])).validate(body)
    spec = doc.get("spec", {})
    ports = [p for rule in spec.get("rules", []) for to in rule.get("to", [])
             for p in to.get("operation", {}).get("ports", [])]
    ports += list(spec.get("portLevelMtls", {}))
    for port in ports:
        if not (str(port).isdigit() and 0 < int(port) <= 65535):
            raise jsonschema.ValidationError(f"port {port!r} must be between 1-65535")


def validate(doc: dict) -> None:
    if doc["kind"] in ISTIO_KINDS:
        validate_istio(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------
# Rendering and schema validation
# ---------------------------------------------------------------------------------------------
def test_base_renders_the_expected_objects(base_docs):
    objects = set(by_kind_name(base_docs))
    expected = {
        ("Deployment", "campseg-minio"), ("PersistentVolumeClaim", "campseg-minio-data"),
        ("Service", "campseg-minio"), ("Job", "campseg-minio-setup"),
        ("ConfigMap", "campseg-minio-policy"),
        ("StatefulSet", "campseg-postgres"), ("Service", "campseg-postgres"),
        ("Deployment", "campseg-mlflow"), ("Service", "campseg-mlflow"),
        ("ConfigMap", "campseg-mlflow-auth-config"), ("Job", "campseg-mlflow-setup"),
        ("ConfigMap", "kfp-launcher"), ("ConfigMap", "campseg-endpoints"),
        ("ServiceAccount", "campseg-services"), ("ServiceAccount", "campseg-mlflow"),
        ("ServiceAccount", "campseg-pipeline-runner"),
        ("Role", "campseg-pipeline-runner"), ("RoleBinding", "campseg-pipeline-runner"),
    }
    assert expected <= objects, f"missing: {sorted(expected - objects)}"
    for doc in base_docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "campseg", doc["metadata"]
    # The base has no Istio objects (a standalone KFP without Istio has no such CRDs).
    assert not {d["kind"] for d in base_docs} & ISTIO_KINDS


def test_overlay_adds_the_istio_policies(overlay_docs):
    objects = by_kind_name(overlay_docs)
    for server in ("campseg-minio", "campseg-mlflow", "campseg-postgres"):
        assert ("AuthorizationPolicy", server) in objects
        assert ("PeerAuthentication", server) in objects
        assert objects[("AuthorizationPolicy", server)]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "campseg"


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_rendered_objects_validate_against_their_schemas(which, base_docs, overlay_docs):
    docs = base_docs if which == "base" else overlay_docs
    for doc in docs:
        validate(doc)


def test_the_istio_schemas_are_istios_security_v1():
    kinds = _istio_schemas()
    assert set(kinds) == ISTIO_KINDS
    for entry in kinds.values():
        assert (entry["group"], entry["version"]) == ("security.istio.io", "v1")
        spec = entry["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert spec, entry
    ap = kinds["AuthorizationPolicy"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    rule = ap["rules"]["items"]["properties"]
    source = rule["from"]["items"]["properties"]["source"]["properties"]
    operation = rule["to"]["items"]["properties"]["operation"]["properties"]
    assert {"principals", "notPrincipals", "namespaces"} <= set(source)
    assert {"ports", "methods", "paths"} <= set(operation)
    assert set(ap["action"]["enum"]) >= {"ALLOW", "DENY"}


def test_an_invalid_istio_policy_fails_validation(overlay_docs):
    policy = by_kind_name(overlay_docs)[("AuthorizationPolicy", "campseg-minio")]
    validate(policy)
    broken = [copy.deepcopy(policy) for _ in range(5)]
    broken[0]["spec"]["action"] = "PERMIT"                                      # not an action
    broken[1]["spec"]["rules"][0]["from"][0]["source"]["principal"] = ["x"]     # misspelt field
    broken[2]["spec"]["rules"][0]["to"][0]["operation"]["ports"] = ["s3"]        # not a port
    broken[3]["apiVersion"] = "security.istio.io/v1alpha1"
    broken[4]["spec"]["selector"] = {"matchLabels": "campseg-minio"}            # not a map
    for doc in broken:
        with pytest.raises(jsonschema.ValidationError):
            validate(doc)
    peer = copy.deepcopy(by_kind_name(overlay_docs)[("PeerAuthentication", "campseg-minio")])
    peer["spec"]["mtls"]["mode"] = "MUTUAL"
    with pytest.raises(jsonschema.ValidationError):
        validate(peer)


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
    deployment = next(d for d in mlflow if d["kind"] == "Deployment")
    del deployment["spec"]["template"]["spec"]["containers"]
    (work / "mlflow.yaml").write_text(yaml.safe_dump_all(mlflow))
    docs = render(work)
    broken = by_kind_name(docs)[("Deployment", "campseg-mlflow")]
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
#: A URL with a password in it (scheme://user:password@host).
URL_WITH_PASSWORD = re.compile(r"[a-z0-9+]+://[^/\s:@]+:[^/\s@]+@")


def looks_like_a_key(word: str) -> bool:
    """A long random-looking token (base64/hex): upper, lower and digits, not a path."""
    return (len(word) >= 24 and not word.startswith("/") and any(c.isdigit() for c in word)
            and any(c.isupper() for c in word) and any(c.islower() for c in word))


def test_secret_templates_hold_only_placeholders():
    templates = secret_templates()
    assert set(templates) == {"campseg-minio-root", "campseg-s3-credentials",
                              "campseg-postgres-credentials", "campseg-mlflow-auth",
                              "campseg-mlflow-credentials"}
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


def test_the_pipeline_code_uses_the_manifests_names(base_docs):
    """The defaults of components/kubeflow/cluster.py name what the manifests create."""
    cluster = pytest.importorskip("components.kubeflow.cluster")
    settings = cluster.ClusterSettings()
    templates = secret_templates()
    assert set(cluster.SECRET_ENV) <= set(templates[settings.storage_secret])
    assert set(cluster.MLFLOW_SECRET_ENV) == set(templates[settings.mlflow_secret])
    endpoints = by_kind_name(base_docs)[("ConfigMap", settings.config_map)]["data"]
    assert set(cluster.CONFIG_ENV) <= set(endpoints)


# ---------------------------------------------------------------------------------------------
# No password on a command line
# ---------------------------------------------------------------------------------------------
PASSWORD_LIKE = re.compile(r"(?i)password|passwd|secret|token|MC_HOST")


def _password_env_names(container: dict) -> set[str]:
    """Env vars holding a password: a password-like name from a Secret, or a value that expands one."""
    names = {e["name"] for e in container.get("env", [])
             if "secretKeyRef" in e.get("valueFrom", {}) and PASSWORD_LIKE.search(e["name"])}
    for e in container.get("env", []):
        if any(f"$({n})" in e.get("value", "") for n in names):
            names.add(e["name"])
    return names


def test_no_password_on_any_command_line(base_docs):
    checked = 0
    for doc, spec in workloads(base_docs):
        for container in _containers(spec):
            where = f"{doc['metadata']['name']}/{container['name']}"
            secrets = _password_env_names(container)
            argv = [*container.get("command", []), *container.get("args", [])]
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                argv += container.get(probe, {}).get("exec", {}).get("command", [])
            for arg in argv:
                # Kubernetes expands $(VAR) in command/args: never a secret there.
                for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    assert name not in secrets and not PASSWORD_LIKE.search(name), f"{where}: $({name}) in {arg!r}"
                assert not URL_WITH_PASSWORD.search(arg), f"{where}: a URL with a password: {arg!r}"
                for pattern in SUSPICIOUS:
                    assert not pattern.search(arg), f"{where}: {arg!r}"
                # In a shell script a secret variable may only feed a builtin's standard input
                # (printf ... | cmd): as an argument of a program it would show in its argv.
                for line in arg.splitlines():
                    for name in secrets:
                        if re.search(rf"\$\{{?{name}\b", line):
                            assert re.match(r"\s*printf\b[^|]*\|", line), f"{where}: ${name} on a command line: {line!r}"
                checked += 1
    assert checked
    # In particular MLflow: no --backend-store-uri argument, a URI with no login in it.
    mlflow = by_kind_name(base_docs)[("Deployment", "campseg-mlflow")]["spec"]["template"]["spec"]["containers"][0]
    assert not [a for a in mlflow["args"] if a.startswith("--backend-store-uri")]
    env = env_of(mlflow)
    assert "@" not in env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "campseg-postgres-credentials"


def test_the_command_line_check_catches_a_password(base_docs):
    mlflow = copy.deepcopy(by_kind_name(base_docs)[("Deployment", "campseg-mlflow")])
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    container["args"].append("--backend-store-uri=postgresql://$(PGUSER):$(PGPASSWORD)@campseg-postgres:5432/mlflow")
    with pytest.raises(AssertionError, match="PGPASSWORD"):
        test_no_password_on_any_command_line([mlflow])


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
    accounts = {d["metadata"]["name"]: d for d in base_docs if d["kind"] == "ServiceAccount"}
    for doc, spec in workloads(base_docs):
        assert spec.get("automountServiceAccountToken") is False, doc["metadata"]["name"]
        expected = "campseg-mlflow" if doc["metadata"]["name"] == "campseg-mlflow" else "campseg-services"
        assert spec.get("serviceAccountName") == expected, doc["metadata"]["name"]
        assert accounts[expected].get("automountServiceAccountToken") is False


# ---------------------------------------------------------------------------------------------
# Least privilege: the runner's Role, the pipeline's S3 policy, MLflow's authentication
# ---------------------------------------------------------------------------------------------
READ_VERBS = {"get", "list", "watch"}
#: The multi-node training jobs the training step submits (--train-nodes N): create and delete, never patch.
TRAINING_JOBS = {(("trainer.kubeflow.org",), ("trainjobs",)): {"create", "delete"},
                 (("kubeflow.org",), ("pytorchjobs",)): {"create", "delete"}}


def test_runner_role_is_least_privilege(base_docs):
    rules = by_kind_name(base_docs)[("Role", "campseg-pipeline-runner")]["rules"]
    assert not [k for k in base_docs if k["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        writes = set(rule["verbs"]) - READ_VERBS
        if writes:  # the only objects a run may write: Argo's WorkflowTaskResults, its training jobs
            allowed = TRAINING_JOBS.get((tuple(rule["apiGroups"]), tuple(rule["resources"])))
            if allowed:
                assert writes <= allowed, rule
            else:
                assert rule["apiGroups"] == ["argoproj.io"] and rule["resources"] == ["workflowtaskresults"], rule
                assert writes <= {"create", "patch"}, rule
        if {"secrets", "configmaps"} & set(rule["resources"]):
            assert rule.get("resourceNames") and set(rule["verbs"]) == {"get"}, rule
    # No pod may be patched (or created, deleted, exec'ed into).
    for rule in rules:
        pods = [r for r in rule["resources"] if r == "pods" or r.startswith("pods/")]
        if pods:
            assert set(rule["verbs"]) <= READ_VERBS, rule
            assert set(pods) <= {"pods", "pods/log"}, rule
    # Each rule is explained in rbac.yaml.
    text = (BASE / "rbac.yaml").read_text()
    role_text = text[text.index("kind: Role"):text.index("kind: RoleBinding")]
    assert role_text.count("  - apiGroups:") == len(rules)
    assert role_text.count("\n  # ") >= len(rules) - 1  # one comment per rule (pods and pods/log share one)


def test_runner_may_submit_watch_and_delete_its_training_jobs(base_docs):
    """What components/kubeflow/job_launcher.py calls, for either kind of job."""
    from components.kubeflow.train_jobs import API

    rules = by_kind_name(base_docs)[("Role", "campseg-pipeline-runner")]["rules"]
    for group, _version, plural, _kind in API.values():
        (rule,) = [r for r in rules if r["apiGroups"] == [group] and r["resources"] == [plural]]
        assert set(rule["verbs"]) == {"create", "get", "list", "watch", "delete"}, rule
        assert "resourceNames" not in rule  # the job's name is the KFP run's, unknown here


def _minio_setup(docs):
    return by_kind_name(docs)[("Job", "campseg-minio-setup")]["spec"]["template"]["spec"]


def test_the_pipeline_s3_policy_is_limited_to_the_campseg_buckets(base_docs):
    objects = by_kind_name(base_docs)
    policy_file = BASE / "minio-policy-campseg-pipeline.json"
    policy = json.loads(policy_file.read_text())
    assert policy["Version"] == "2012-10-17"
    setup = _minio_setup(base_docs)
    script = setup["containers"][0]["args"][0]
    buckets = set(script.split("for bucket in ")[1].split(";")[0].split())
    root_bucket = objects[("ConfigMap", "kfp-launcher")]["data"]["defaultPipelineRoot"][len("s3://"):].split("/")[0]
    assert root_bucket in buckets and "campseg-data" in buckets
    resources = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow", statement
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}, statement  # no conditions, no NotAction
        for action in statement["Action"]:
            assert action.startswith("s3:") and "*" not in action, action
            assert action not in {"s3:PutBucketPolicy", "s3:DeleteBucket", "s3:CreateBucket",
                                  "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"}, action
        for resource in statement["Resource"]:
            assert resource.startswith("arn:aws:s3:::"), resource
            resources.add(resource[len("arn:aws:s3:::"):])
    assert {r.split("/")[0] for r in resources} == buckets
    assert {r for r in resources if "/" in r} == {f"{b}/*" for b in buckets}
    # The Job loads exactly this file and gives the pipeline user that policy, not "readwrite".
    generated = objects[("ConfigMap", "campseg-minio-policy")]["data"]
    assert json.loads(generated[policy_file.name]) == policy
    mount = next(m for m in setup["containers"][0]["volumeMounts"] if m["name"] == "policy")
    volume = next(v for v in setup["volumes"] if v["name"] == "policy")
    assert volume["configMap"]["name"] == "campseg-minio-policy"
    assert f"mc admin policy create campseg campseg-pipeline {mount['mountPath']}/{policy_file.name}" in script
    assert 'mc admin policy attach campseg campseg-pipeline --user "$AWS_ACCESS_KEY_ID"' in script
    assert "policy attach campseg readwrite" not in script
    assert 'mc admin policy detach campseg readwrite --user "$AWS_ACCESS_KEY_ID"' in script


def test_mlflow_requires_a_login(base_docs):
    objects = by_kind_name(base_docs)
    spec = objects[("Deployment", "campseg-mlflow")]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert "--app-name=basic-auth" in container["args"]
    env = env_of(container)
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "campseg-mlflow-auth", name
    # The auth config file comes from the ConfigMap, mounted where MLFLOW_AUTH_CONFIG_PATH points.
    config_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    ini = objects[("ConfigMap", volume["configMap"]["name"])]["data"][config_path.name]
    import configparser
    parser = configparser.ConfigParser()
    parser.read_string(ini)
    auth = parser["mlflow"]
    assert auth["default_permission"] in ("READ", "NO_PERMISSIONS")
    assert auth["database_uri"].startswith("postgresql+psycopg2://campseg-postgres:5432/")
    assert "@" not in auth["database_uri"] and "admin_password" not in auth
    # The pipeline's own MLflow user is created by a Job with the admin login.
    job = objects[("Job", "campseg-mlflow-setup")]["spec"]["template"]["spec"]["containers"][0]
    job_env = env_of(job)
    assert job_env["PIPELINE_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "campseg-mlflow-credentials", "key": "MLFLOW_TRACKING_USERNAME"}
    assert "create_user" in job["args"][0] and "update_user_password" in job["args"][0]
    compile(job["args"][0], "campseg-mlflow-setup", "exec")  # the script at least parses


# ---------------------------------------------------------------------------------------------
# The pieces fit together
# ---------------------------------------------------------------------------------------------
def _service_port(objects, service: str, name: str) -> int:
    return next(p["port"] for p in objects[("Service", service)]["spec"]["ports"] if p["name"] == name)


def test_kfp_launcher_points_the_pipeline_root_at_minio(overlay_docs):
    objects = by_kind_name(overlay_docs)
    data = objects[("ConfigMap", "kfp-launcher")]["data"]
    root = data["defaultPipelineRoot"]
    assert root.startswith("s3://"), root
    bucket = root[len("s3://"):].split("/")[0]
    providers = yaml.safe_load(data["providers"])
    default = providers["s3"]["default"]
    s3_port = _service_port(objects, "campseg-minio", "s3")
    assert default["endpoint"] == f"campseg-minio.{OVERLAY_NAMESPACE}.svc.cluster.local:{s3_port}"
    assert default["disableSSL"] is True and default["credentials"]["fromEnv"] is False
    setup = _minio_setup(overlay_docs)["containers"][0]["args"][0]
    assert bucket in setup, f"the campseg-minio-setup Job does not create the pipeline-root bucket {bucket!r}"
    # The launcher may read exactly that Secret and ConfigMap.
    rules = objects[("Role", "campseg-pipeline-runner")]["rules"]
    secret_rule = next(r for r in rules if r["resources"] == ["secrets"])
    assert secret_rule["resourceNames"] == [default["credentials"]["secretRef"]["secretName"]]
    cm_rule = next(r for r in rules if r["resources"] == ["configmaps"])
    assert cm_rule["resourceNames"] == ["kfp-launcher"]


def test_mlflow_uses_postgres_and_minio(base_docs):
    objects = by_kind_name(base_docs)
    container = objects[("Deployment", "campseg-mlflow")]["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    pg_port = _service_port(objects, "campseg-postgres", "postgres")
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == f"postgresql+psycopg2://campseg-postgres:{pg_port}/mlflow"
    assert env["PGUSER"]["valueFrom"]["secretKeyRef"]["key"] == "POSTGRES_USER"
    assert "--artifacts-destination=s3://mlflow/" in container["args"]
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == f"http://campseg-minio:{_service_port(objects, 'campseg-minio', 's3')}"
    setup = _minio_setup(base_docs)["containers"][0]["args"][0]
    assert "mlflow" in setup.split("for bucket in ")[1].split(";")[0]
    postgres = objects[("StatefulSet", "campseg-postgres")]
    assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert postgres["spec"]["serviceName"] == "campseg-postgres"
    # Every Service selects the pods of its workload.
    for (kind, name), doc in objects.items():
        if kind == "Service":
            workload = next(d for d in base_docs if d["kind"] in SERVER_KINDS and d["metadata"]["name"] == name)
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"].items() <= labels.items(), name


def test_overlay_sets_the_namespace_everywhere(overlay_docs):
    for doc in overlay_docs:
        assert doc["metadata"].get("namespace") == OVERLAY_NAMESPACE, (doc["kind"], doc["metadata"]["name"])
    binding = by_kind_name(overlay_docs)[("RoleBinding", "campseg-pipeline-runner")]
    assert binding["subjects"][0]["namespace"] == OVERLAY_NAMESPACE
    mlflow = by_kind_name(overlay_docs)[("Deployment", "campseg-mlflow")]
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["image"].startswith("registry.example.com/")
    # No placeholder left anywhere.
    assert NAMESPACE_PLACEHOLDER not in yaml.safe_dump_all(overlay_docs)


def _fqdn_endpoints(docs: list[dict]) -> dict[str, str]:
    objects = by_kind_name(docs)
    data = objects[("ConfigMap", "campseg-endpoints")]["data"]
    endpoints = {k: data[k] for k in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI")}
    providers = yaml.safe_load(objects[("ConfigMap", "kfp-launcher")]["data"]["providers"])
    endpoints["kfp-launcher"] = "http://" + providers["s3"]["default"]["endpoint"]
    return endpoints


def _assert_fqdns(docs: list[dict], namespace: str) -> None:
    objects = by_kind_name(docs)
    expected = {"AWS_ENDPOINT_URL": ("campseg-minio", "s3"), "MLFLOW_S3_ENDPOINT_URL": ("campseg-minio", "s3"),
                "kfp-launcher": ("campseg-minio", "s3"), "MLFLOW_TRACKING_URI": ("campseg-mlflow", "http")}
    for key, url in _fqdn_endpoints(docs).items():
        service, port_name = expected[key]
        port = _service_port(objects, service, port_name)
        assert url == f"http://{service}.{namespace}.svc.cluster.local:{port}", (key, url)


def test_overlay_endpoints_are_fully_qualified_with_its_namespace(overlay_docs, base_docs):
    _assert_fqdns(overlay_docs, OVERLAY_NAMESPACE)
    # The base holds the placeholder (a base applied on its own fails loudly, not subtly).
    assert all(f".{NAMESPACE_PLACEHOLDER}.svc.cluster.local:" in url for url in _fqdn_endpoints(base_docs).values())


def test_a_copied_overlay_with_another_namespace_follows_it(tmp_path):
    """The namespace is written once: a copy of the overlay with another one gets FQDNs and
    Istio principals in that namespace."""
    work = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, work)
    kustomization = work / "overlays" / "example" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace(
        f"namespace: {OVERLAY_NAMESPACE}", "namespace: team-refugee-maps"))
    docs = render(work / "overlays" / "example")
    _assert_fqdns(docs, "team-refugee-maps")
    postgres = by_kind_name(docs)[("AuthorizationPolicy", "campseg-postgres")]
    assert postgres["spec"]["rules"][0]["from"][0]["source"]["principals"] == [
        "cluster.local/ns/team-refugee-maps/sa/campseg-mlflow"]
    assert OVERLAY_NAMESPACE not in yaml.safe_dump_all(docs)


def test_names_are_campseg_prefixed_and_do_not_collide_with_kfp(overlay_docs):
    names = {d["metadata"]["name"] for d in overlay_docs}
    for doc in overlay_docs:
        name = doc["metadata"]["name"]
        assert name.startswith("campseg-") or name in INTENDED_KFP_NAMES, (doc["kind"], name)
    assert names & KFP_OWN_NAMES == INTENDED_KFP_NAMES
    # Also the names the objects refer to: Secrets, PVCs, ConfigMaps, service accounts, hosts.
    for doc, spec in workloads(overlay_docs):
        assert spec["serviceAccountName"].startswith("campseg-")
        for container in _containers(spec):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["name"].startswith("campseg-"), env
        for volume in spec.get("volumes", []):
            for ref in (volume.get("configMap"), volume.get("persistentVolumeClaim")):
                if ref:
                    assert (ref.get("name") or ref.get("claimName")).startswith("campseg-"), volume


# ---------------------------------------------------------------------------------------------
# Istio: every server the sidecar-less pipeline pods reach is open to them on exactly its port
# ---------------------------------------------------------------------------------------------
def _source_matches(source: dict, principal: str | None, namespace: str | None) -> bool:
    def match(values, value):
        return any(v == "*" and value is not None or v == value for v in values)
    if "principals" in source and not match(source["principals"], principal):
        return False
    if "notPrincipals" in source and match(source["notPrincipals"], principal):
        return False
    if "namespaces" in source and not match(source["namespaces"], namespace):
        return False
    if "notNamespaces" in source and match(source["notNamespaces"], namespace):
        return False
    assert set(source) <= {"principals", "notPrincipals", "namespaces", "notNamespaces"}, source
    return True


def allows(policy: dict, port: int, principal: str | None = None) -> bool:
    """Whether an ALLOW policy admits a request to ``port`` from ``principal`` (None: plain text,
    no sidecar; else cluster.local/ns/<namespace>/sa/<account>)."""
    assert policy["spec"].get("action", "ALLOW") == "ALLOW"
    namespace = principal.split("/")[2] if principal else None
    for rule in policy["spec"].get("rules", []):
        assert set(rule) <= {"from", "to"}, rule
        froms = rule.get("from", [{"source": {}}])
        tos = rule.get("to", [{"operation": {}}])
        if (any(_source_matches(f["source"], principal, namespace) for f in froms)
                and any(str(port) in t["operation"].get("ports", [str(port)]) for t in tos)):
            return True
    return False


def _sa(namespace: str, account: str) -> str:
    return f"cluster.local/ns/{namespace}/sa/{account}"


def _pod_labels(docs, name: str) -> dict:
    workload = next(d for d in docs if d["kind"] in SERVER_KINDS and d["metadata"]["name"] == name)
    return workload["spec"]["template"]["metadata"]["labels"]


def test_each_server_has_an_authorization_policy_or_no_sidecar(overlay_docs):
    objects = by_kind_name(overlay_docs)
    policies = [d for d in overlay_docs if d["kind"] == "AuthorizationPolicy"]
    for doc, spec in workloads(overlay_docs):
        annotations = doc["spec"]["template"].get("metadata", {}).get("annotations", {})
        labels = doc["spec"]["template"]["metadata"]["labels"]
        selecting = [p for p in policies if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        if doc["kind"] == "Job":  # a Job with a sidecar would never complete
            assert annotations.get("sidecar.istio.io/inject") == "false", doc["metadata"]["name"]
            assert not selecting
        else:  # servers keep their sidecar and get exactly one policy and one PeerAuthentication
            assert annotations.get("sidecar.istio.io/inject") != "false", doc["metadata"]["name"]
            assert len(selecting) == 1, doc["metadata"]["name"]
            peer = objects[("PeerAuthentication", doc["metadata"]["name"])]
            assert peer["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Every rule names its port(s): nothing is open on every port, no catch-all rule ("- {}").
    for policy in policies:
        for rule in policy["spec"]["rules"]:
            assert rule.get("from") and rule.get("to"), (policy["metadata"]["name"], rule)
            assert all(t["operation"].get("ports") for t in rule["to"]), rule


def test_minio_and_mlflow_are_open_to_the_pipeline_pods_on_their_port_only(overlay_docs):
    objects = by_kind_name(overlay_docs)
    ns = OVERLAY_NAMESPACE
    minio = objects[("AuthorizationPolicy", "campseg-minio")]
    s3 = _service_port(objects, "campseg-minio", "s3")
    console = _service_port(objects, "campseg-minio", "console")
    assert allows(minio, s3, principal=None)                                   # steps, launcher, Job
    assert allows(minio, s3, _sa(ns, "campseg-mlflow"))                       # MLflow's artifacts
    assert allows(minio, s3, _sa("kubeflow", "ml-pipeline-ui"))                # KFP UI viewers
    assert allows(minio, s3, _sa("kubeflow", "ml-pipeline"))
    assert not allows(minio, s3, _sa("kubeflow", "jupyter-web-app-service-account"))
    assert not allows(minio, s3, _sa("kubeflow-user-other", "default-editor"))  # another profile
    assert not allows(minio, console, principal=None)
    assert not allows(minio, console, _sa(ns, "default-editor"))
    mlflow = objects[("AuthorizationPolicy", "campseg-mlflow")]
    http = _service_port(objects, "campseg-mlflow", "http")
    assert allows(mlflow, http, principal=None)
    assert allows(mlflow, http, _sa(ns, "default-editor"))                     # notebooks
    assert not allows(mlflow, http, _sa("kubeflow-user-other", "default-editor"))
    assert not allows(mlflow, http + 1, principal=None)
    # The plain-text port accepts plain text even under a STRICT mesh; the other ports need mTLS.
    for server, port in (("campseg-minio", s3), ("campseg-mlflow", http)):
        peer = objects[("PeerAuthentication", server)]["spec"]
        assert peer["mtls"]["mode"] == "STRICT"
        assert peer["portLevelMtls"] == {str(port): {"mode": "PERMISSIVE"}}
        # The policy's port is the container port the Service targets (Istio matches pod ports).
        service_port = next(p for p in objects[("Service", server)]["spec"]["ports"] if p["port"] == port)
        container_ports = {p["name"]: p["containerPort"] for d in overlay_docs
                           if d["kind"] == "Deployment" and d["metadata"]["name"] == server
                           for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert container_ports[service_port["targetPort"]] == port


def test_postgres_is_reached_only_by_mlflow(overlay_docs):
    objects = by_kind_name(overlay_docs)
    ns = OVERLAY_NAMESPACE
    policy = objects[("AuthorizationPolicy", "campseg-postgres")]
    port = _service_port(objects, "campseg-postgres", "postgres")
    mlflow_sa = objects[("Deployment", "campseg-mlflow")]["spec"]["template"]["spec"]["serviceAccountName"]
    assert allows(policy, port, _sa(ns, mlflow_sa))
    assert not allows(policy, port, principal=None)                    # the sidecar-less pipeline pods
    assert not allows(policy, port, _sa(ns, "campseg-pipeline-runner"))
    assert not allows(policy, port, _sa(ns, "default-editor"))
    assert not allows(policy, port, _sa("kubeflow", "ml-pipeline"))
    assert not allows(policy, port, _sa("other", mlflow_sa))
    peer = objects[("PeerAuthentication", "campseg-postgres")]["spec"]
    assert peer["mtls"]["mode"] == "STRICT" and "portLevelMtls" not in peer
    assert _pod_labels(overlay_docs, "campseg-postgres").items() >= policy["spec"]["selector"]["matchLabels"].items()


def test_images_are_pinned(base_docs):
    for doc, spec in workloads(base_docs):
        for container in _containers(spec):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{doc['metadata']['name']}: {image} is not pinned"
