"""The KubeRay manifests in cluster/ as the API server and the operator would take them, without a cluster.

- every ``ray.io/v1`` object against the openAPIV3Schema of its CRD version in ``../shared/kuberay``
  (KubeRay 1.7), read the way the API server reads it: unknown fields refused (kubectl's default
  ``--validate=strict``), required fields with a default filled first, int-or-string, int32/int64 ranges;
  its CEL rules (``x-kubernetes-validations``) are not evaluated: the operator's own checks below cover
  the ones these manifests touch;
- every core object, and every pod template inside the Ray objects as a Pod, with ``kubernetes-validate``;
- the KubeRay 1.7 operator's admission checks these manifests could trip (``utils/validation.go``);
- every ``python -m pipelines.X`` entrypoint parsed by that module's own parser;
- the design: one image, token auth, the storage ServiceAccount and the MLflow ConfigMap everywhere.
Each check is also shown failing on a broken copy.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import re
import shlex
import zoneinfo
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import gendet

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = REPO.parent / "shared" / "kuberay"  # CI has shared/ beside the clone
KUBERNETES = "1.32.0"  # a version kubernetes-validate ships (offline); KubeRay 1.7 supports it
NOT_KUBERNETES = {"prometheus-rules.yaml"}  # a Prometheus rule_files file (tests/test_prometheus_rules.py)
THIRD_PARTY = {"monitoring.coreos.com"}  # PodMonitor / PrometheusRule: their CRDs are not vendored here
IMAGE = "ghcr.io/your-org/gendet"
RAY_CONTAINERS = {"ray-head", "ray-worker"}

needs_crds = pytest.mark.skipif(not KUBERAY.is_dir(), reason=f"KubeRay CRDs not found at {KUBERAY} (shared/ beside the clone)")
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def documents() -> list[tuple[str, dict]]:
    """(``file#index kind/name``, object) for every YAML document in cluster/."""
    out = []
    for path in sorted(CLUSTER.glob("*.yaml")):
        if path.name in NOT_KUBERNETES:
            continue
        for i, doc in enumerate(yaml.load_all(path.read_text(), Loader=Loader)):
            if doc is not None:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}#{i}: not a Kubernetes object"
                out.append((f"{path.name}#{i} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return out


def group_of(obj: dict) -> str:
    return obj["apiVersion"].rpartition("/")[0]


def ray_objects() -> list[tuple[str, dict]]:
    return [(where, obj) for where, obj in documents() if group_of(obj) == "ray.io"]


def cluster_specs(obj: dict) -> list[dict]:
    """The RayCluster specs a Ray object carries (a RayJob's own cluster, a RayCronJob's template's)."""
    spec = obj["spec"]
    job = spec.get("jobTemplate", spec)
    if obj["kind"] == "RayService":
        return [spec["rayClusterConfig"]]
    return [spec] if obj["kind"] == "RayCluster" else [job["rayClusterSpec"]] if "rayClusterSpec" in job else []


def job_specs(obj: dict) -> list[dict]:
    if obj["kind"] == "RayCronJob":
        return [obj["spec"]["jobTemplate"]]
    return [obj["spec"]] if obj["kind"] == "RayJob" else []


def groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]


def containers(spec: dict) -> list[dict]:
    return [c for g in groups(spec) for c in g["template"]["spec"]["containers"]]


# ------------------------------------------------------------------------- CRD schemas as JSON Schema
def as_json_schema(node):
    """An openAPIV3Schema node as a Draft 7 schema that behaves like the API server on it."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string") and "type" not in node and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    props = node.get("properties")
    if props is not None:
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False  # an unknown (misspelled) field is an error, as with --validate=strict
        if "required" in node:  # the API server applies defaults before it checks required fields
            out["required"] = [r for r in node["required"] if "default" not in props.get(r, {})]
    return out


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@cache
def crd_validator(kind: str, version: str) -> jsonschema.Draft7Validator | None:
    """The validator of ``kind`` at ``version`` from its CRD file in shared/kuberay (None: not served)."""
    path = KUBERAY / f"ray.io_{kind.lower()}s.yaml"
    crd = yaml.load(path.read_text(), Loader=Loader) if path.is_file() else {"spec": {"names": {}, "versions": []}}
    for served in crd["spec"]["versions"]:
        if crd["spec"]["names"]["kind"] == kind and served["name"] == version and served.get("served", True):
            return jsonschema.Draft7Validator(as_json_schema(served["schema"]["openAPIV3Schema"]), format_checker=FORMATS)
    return None


def without_nulls(node):
    """The API server drops a null field (``metadata:`` left empty) before it validates."""
    if isinstance(node, dict):
        return {k: without_nulls(v) for k, v in node.items() if v is not None}
    return [without_nulls(v) for v in node] if isinstance(node, list) else node


def crd_errors(obj: dict) -> list[str]:
    validator = crd_validator(obj["kind"], obj["apiVersion"].partition("/")[2])
    if validator is None:
        return [f"no CRD in {KUBERAY} serves {obj['apiVersion']} {obj['kind']}"]
    errors = validator.iter_errors(without_nulls(obj))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors]


def core_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
        return [str(getattr(exc, "message", exc))[:300]]
    return []


def as_pod(template: dict) -> dict:
    template = without_nulls(template)
    meta = {"name": "gendet-pod", **template.get("metadata", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


def metadata_errors(obj: dict) -> list[str]:
    """A custom resource's metadata is the API server's ObjectMeta, which its CRD schema leaves open."""
    return core_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]})


@needs_crds
@pytest.mark.parametrize("where,obj", ray_objects(), ids=[w for w, _ in ray_objects()])
def test_ray_objects_match_their_crd_schema(where, obj):
    assert crd_errors(obj) + metadata_errors(obj) == [], where


CORE = [(w, o) for w, o in documents() if group_of(o) not in THIRD_PARTY | {"ray.io"}]


@pytest.mark.parametrize("where,obj", CORE, ids=[w for w, _ in CORE])
def test_core_objects_are_valid_kubernetes(where, obj):
    assert core_errors(obj) == [], where


def test_pod_templates_inside_the_ray_objects_are_valid_pods():
    found = 0
    for where, obj in ray_objects():
        for spec in cluster_specs(obj):
            for group in groups(spec):
                found += 1
                assert core_errors(as_pod(group["template"])) == [], f"{where} {group.get('groupName', 'head')}"
    assert found >= 6  # the RayCluster's head + 2 groups, and the RayJobs' own clusters


@needs_crds
def test_the_schemas_accept_kuberays_own_samples():  # the conversion is not stricter than the API server
    samples = [d for p in sorted(KUBERAY.glob("*.sample.yaml")) for d in yaml.load_all(p.read_text(), Loader=Loader)
               if d and group_of(d) == "ray.io"]
    assert {d["kind"] for d in samples} == {"RayJob", "RayCronJob"}
    assert [e for d in samples for e in crd_errors(d)] == []


@needs_crds
def test_the_schemas_refuse_a_broken_manifest():
    cluster = next(copy.deepcopy(o) for _, o in ray_objects() if o["kind"] == "RayCluster")
    assert crd_errors(cluster) == []
    misspelled = copy.deepcopy(cluster)
    misspelled["spec"]["workerGroupSpecs"][0]["maxReplica"] = misspelled["spec"]["workerGroupSpecs"][0].pop("maxReplicas")
    assert any("maxReplica" in e for e in crd_errors(misspelled))
    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["workerGroupSpecs"][0]["minReplicas"] = "zero"
    assert any("minReplicas" in e for e in crd_errors(wrong_type))
    wrong_enum = copy.deepcopy(cluster)
    wrong_enum["spec"]["authOptions"]["mode"] = "tokens"
    assert any("authOptions.mode" in e for e in crd_errors(wrong_enum))
    too_big = copy.deepcopy(cluster)
    too_big["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 2**31
    assert any("int32" in e for e in crd_errors(too_big))
    deep_typo = copy.deepcopy(cluster)
    deep_typo["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}
    assert any("resource" in e for e in crd_errors(deep_typo))
    assert core_errors(as_pod(deep_typo["spec"]["headGroupSpec"]["template"])) != []
    assert crd_errors({**cluster, "apiVersion": "ray.io/v2"}) != [] and crd_errors({**cluster, "kind": "RayClusters"}) != []
    account = next(copy.deepcopy(o) for _, o in documents() if o["kind"] == "ServiceAccount")
    account["metadata"]["annotation"] = account["metadata"].pop("annotations")
    assert core_errors(account) != [] and metadata_errors(account) != []


# ------------------------------------------------------------------ the KubeRay 1.7 operator's checks
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 36, "RayService": 40}  # utils/constant.go


def operator_errors(obj: dict) -> list[str]:
    """The parts of KubeRay 1.7's ``ValidateRayClusterSpec/RayJobSpec/RayCronJobSpec`` (and metadata checks)
    these manifests could trip; the operator refuses such an object after ``kubectl apply`` accepted it."""
    meta = obj["metadata"]
    errs, name = [], meta.get("name") or meta.get("generateName", "") + "x" * 5  # the API server adds 5 characters
    if len(name) > MAX_NAME[obj["kind"]] or not DNS1035.match(name):
        errs.append(f"name {name!r}: a DNS-1035 label of at most {MAX_NAME[obj['kind']]} characters")
    for spec in cluster_specs(obj):
        if spec.get("authOptions", {}).get("mode") == "token":
            version = tuple(int(x) for x in re.findall(r"\d+", spec.get("rayVersion", ""))[:3])
            if version < (2, 52, 0):
                errs.append(f"authOptions.mode token needs rayVersion >= 2.52.0, got {spec.get('rayVersion')!r}")
        autoscaling = spec.get("enableInTreeAutoscaling", False)
        v2 = autoscaling and spec.get("autoscalerOptions", {}).get("version") == "v2"
        for group in groups(spec):
            label = group.get("groupName", "head")
            params = group.get("rayStartParams", {})
            if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
                errs.append(f"{label}: resources in both rayStartParams and resources")
            if "labels" in params:
                errs.append(f"{label}: rayStartParams labels (use the group's labels field)")
            if v2 and group["template"]["spec"].get("restartPolicy", "Never") != "Never":
                errs.append(f"{label}: restartPolicy must be Never or unset with autoscaler v2")
            if label != "head":
                lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)  # the CRD's defaults
                if not 0 <= lo <= hi:
                    errs.append(f"{label}: need 0 <= minReplicas <= maxReplicas, got {lo}..{hi}")
                if group.get("idleTimeoutSeconds") is not None and not v2:
                    errs.append(f"{label}: idleTimeoutSeconds needs autoscaler v2")
    for job in job_specs(obj):
        selector = job.get("clusterSelector", {})
        if not selector and "rayClusterSpec" not in job:
            errs.append("one of rayClusterSpec or clusterSelector must be set")
        if selector and (not selector.get("ray.io/cluster") or job.get("suspend") or job.get("backoffLimit", 0) > 0):
            errs.append("clusterSelector needs ray.io/cluster and allows neither suspend nor backoffLimit > 0")
        if not job.get("shutdownAfterJobFinishes", False) and job.get("ttlSecondsAfterFinished", 0) > 0:
            errs.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
        rules = job.get("deletionStrategy", {}).get("deletionRules", [])
        if rules and job.get("shutdownAfterJobFinishes", False):
            errs.append("deletionRules and shutdownAfterJobFinishes are mutually exclusive")
        if selector and any(r["policy"] in ("DeleteCluster", "DeleteWorkers") for r in rules):
            errs.append("DeleteCluster/DeleteWorkers cannot be used with clusterSelector")
        for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
            if key in job and job[key] <= 0:
                errs.append(f"{key} must be positive")
    if obj["kind"] == "RayCronJob":
        schedule = obj["spec"]["schedule"]
        if "TZ" in schedule or len(schedule.split()) != 5:
            errs.append(f"schedule {schedule!r}: five cron fields, no TZ (use timeZone)")
        if "timeZone" in obj["spec"]:
            try:
                zoneinfo.ZoneInfo(obj["spec"]["timeZone"])
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                errs.append(f"timeZone {obj['spec']['timeZone']!r}: not an IANA time zone")
    return errs


@pytest.mark.parametrize("where,obj", ray_objects(), ids=[w for w, _ in ray_objects()])
def test_the_operator_would_accept_the_ray_objects(where, obj):
    assert operator_errors(obj) == [], where


def test_the_operator_checks_bite():
    by_kind = {o["kind"]: o for _, o in ray_objects()}
    old_ray = copy.deepcopy(by_kind["RayCluster"])
    old_ray["spec"]["rayVersion"] = "2.51.0"
    assert any("2.52" in e for e in operator_errors(old_ray))
    inverted = copy.deepcopy(by_kind["RayCluster"])
    inverted["spec"]["workerGroupSpecs"][0].update(minReplicas=3, maxReplicas=1)
    assert any("minReplicas" in e for e in operator_errors(inverted))
    long_cron = copy.deepcopy(by_kind["RayCronJob"])
    long_cron["metadata"]["name"] = "gendet-refresh-" + "x" * 30
    long_cron["spec"]["timeZone"] = "Mars/Olympus"
    assert len(operator_errors(long_cron)) == 2


# --------------------------------------------------------------------------- entrypoints vs the CLI
def entrypoints() -> list[tuple[str, str]]:
    return [(where, job["entrypoint"]) for where, obj in ray_objects() for job in job_specs(obj)]


def parse_entrypoint(entrypoint: str) -> tuple[str, object]:
    """``python -m pipelines.X ARGS`` -> (module, its job, validated); AssertionError naming the flag refused."""
    from pipelines import _jobs

    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("pipelines."), f"not a pipelines module: {entrypoint!r}"
    module = importlib.import_module(argv[2])
    assert isinstance(getattr(module, "JOB", None), _jobs.JobSpec), f"{argv[2]} has no JOB"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            job, _ = _jobs.parse(module.JOB, argv[3:], prog=argv[2])
        except SystemExit:
            raise AssertionError(f"{argv[2]} refuses {entrypoint!r}: {stderr.getvalue().strip()}") from None
    return argv[2], job


def test_every_entrypoint_is_accepted_by_its_pipeline():
    modules = set()
    for where, entrypoint in entrypoints():
        try:
            modules.add(parse_entrypoint(entrypoint)[0])
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None
    assert modules == {"pipelines.extract", "pipelines.train", "pipelines.refresh"}


def test_an_entrypoint_with_a_flag_the_cli_lacks_is_refused():
    with pytest.raises(AssertionError, match="--num-gpu-workers"):
        parse_entrypoint("python -m pipelines.train s3://b/f/ --train-subsets a --num-gpu-workers 4")


# ------------------------------------------------------------------------------------------- design
def test_every_ray_pod_runs_the_one_image_with_token_auth_storage_role_and_mlflow():
    version = gendet.__version__
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.M).group(1)
    objects = {(o["kind"], o["metadata"]["name"]): o for _, o in documents()}
    account = objects[("ServiceAccount", "gendet")]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/.+", account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])
    assert objects[("ConfigMap", "gendet-config")]["data"]["MLFLOW_TRACKING_URI"].startswith("http")
    specs = [(w, s) for w, o in ray_objects() for s in cluster_specs(o)]
    assert len(specs) == 4  # the RayCluster, the two RayJobs' and the RayService's clusters; the RayCronJob uses the RayCluster
    for where, spec in specs:
        assert spec["rayVersion"] == ray_version, where
        assert spec["authOptions"] == {"mode": "token"} and spec["enableInTreeAutoscaling"] is True, where
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", where
        assert any("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
                   for g in spec["workerGroupSpecs"]), where
        for group in groups(spec):
            pod = group["template"]["spec"]
            assert pod["serviceAccountName"] == "gendet" and pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod.get("automountServiceAccountToken", True) is ("groupName" not in group), where  # head only
        for c in containers(spec):
            assert c["name"] in RAY_CONTAINERS and c["image"] == f"{IMAGE}:{version}", where
            assert {"name": "RAY_AUTH_MODE", "value": "token"} in c["env"], where
            assert {"configMapRef": {"name": "gendet-config"}} in c["envFrom"], where
            assert all(ref["secretRef"].get("optional") for ref in c["envFrom"] if "secretRef" in ref), where  # none committed


def test_jobs_fit_their_clusters_and_the_refresh_reports_through_the_metric():
    objects = {(o["kind"], o["metadata"]["name"]): o for _, o in documents()}
    train = objects[("RayJob", "gendet-train")]["spec"]
    args = parse_entrypoint(train["entrypoint"])[1]
    gpu = next(g for g in train["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert args.workers.use_gpu and args.workers.num_workers <= gpu["maxReplicas"]
    assert all(u.startswith("s3://") for u in (args.features, args.out, args.storage))  # every node reaches them
    refresh = objects[("RayCronJob", "gendet-refresh")]["spec"]["jobTemplate"]
    assert ("RayCluster", refresh["clusterSelector"]["ray.io/cluster"]) in objects
    assert parse_entrypoint(refresh["entrypoint"])[1].alert_exit == 0  # exit code = crashed or not; the alert is the gauge
    assert not (CLUSTER / "refresh-cronjob.yaml").exists()
    assert not [w for w, o in documents() if o["kind"] == "CronJob"]


def test_the_rayservice_builds_the_serve_app_from_valid_args():
    """serveConfigV2 is a string the operator hands to Serve: its app's import_path must be gendet's
    builder and its args fields of ``gendet serve`` that validate (build_app converts and checks them)."""
    from pipelines.serve import ServeJob, _converted

    service = next(o for _, o in ray_objects() if o["kind"] == "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    assert app["import_path"] == "pipelines.serve:build_app" and config["http_options"]["port"] == 8000
    fields = {f.name: f.type for f in __import__("dataclasses").fields(ServeJob)}
    assert set(app["args"]) <= set(fields), set(app["args"]) - set(fields)
    job = ServeJob(**{k: _converted(v, fields[k]) for k, v in app["args"].items()})
    gpu = next(g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert job.num_gpus == 1 and job.max_replicas <= gpu["maxReplicas"]  # every replica can get a GPU pod
    assert job.model.startswith("models:/")
