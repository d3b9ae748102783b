"""``ray_cluster.yaml`` (the ``ray up`` launcher) and the Dockerfile the KubeRay manifests name.

The launcher config is checked against the schema Ray ships (``ray/autoscaler/ray-schema.json``) and by
the same ``prepare_config`` + ``validate_config`` that ``ray up`` runs before it calls AWS. The image
cannot be built here (its base, rayproject/ray, cannot be pulled offline), so what can be read is read:
its Ray and package versions against the manifests and the launcher, non-root, no secrets, and a
build context (.dockerignore) that keeps what the COPY lines and the package need.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import yaml

import gendet

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "ray_cluster.yaml"
DOCKERFILE = REPO / "Dockerfile"


def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def ray_schema() -> dict:
    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])  # without importing Ray
    return json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())


def schema_errors(config: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(ray_schema())
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}" for e in validator.iter_errors(config)]


def dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.M).group(1)


def test_the_launcher_config_matches_rays_schema():
    assert schema_errors(launcher()) == []


def test_ray_up_would_accept_it():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(launcher())  # what `ray up` does before it touches the cloud
    validate_config(config)
    assert config["head_node_type"] == "head" and set(config["available_node_types"]) == {"head", "cpu_decode", "gpu_worker"}


def test_the_schema_refuses_a_broken_launcher_config():
    misspelled = launcher()
    misspelled["worker_start_ray_command"] = misspelled.pop("worker_start_ray_commands")
    assert any("worker_start_ray_command" in e for e in schema_errors(misspelled))
    wrong_type = launcher()
    wrong_type["available_node_types"]["gpu_worker"]["max_workers"] = "four"
    assert any("max_workers" in e for e in schema_errors(wrong_type))
    no_config = launcher()
    del no_config["available_node_types"]["cpu_decode"]["node_config"]
    assert any("node_config" in e for e in schema_errors(no_config))


def test_every_node_runs_token_auth_and_the_dashboard_stays_on_loopback():
    config = launcher()
    starts = [cmd for key in ("head_start_ray_commands", "worker_start_ray_commands") for cmd in config[key]
              if "ray start" in cmd]
    assert len(starts) == 2
    for cmd in starts:
        env = dict(w.split("=", 1) for w in shlex.split(cmd) if re.match(r"^[A-Z_]+=", w))
        assert env["RAY_AUTH_MODE"] == "token", cmd
        assert config["file_mounts"][env["RAY_AUTH_TOKEN_PATH"]]  # the token file reaches every node
    head = next(cmd for cmd in starts if "--head" in cmd)
    assert "--dashboard-host=127.0.0.1" in shlex.split(head)
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_workers_get_an_instance_profile_and_the_storage_backend():
    config = launcher()
    workers = {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}
    assert workers
    for name, node_type in workers.items():
        arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", arn), name
    install = " ".join(config["setup_commands"])
    extras = re.search(r'"gendet\[([^\]]+)\]', install).group(1).split(",")
    assert {"ray", "s3"} <= set(extras)
    assert f"@v{gendet.__version__}" in install  # the release the image and the manifests name
    assert re.search(r"ray\[[^\]]*\]==(\S+?)\"", install).group(1) == dockerfile_arg("RAY_VERSION")


# ---------------------------------------------------------------------------------------- Dockerfile
def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_the_image_is_rays_gpu_image_with_gendet_installed_as_a_user():
    steps = instructions()
    base = next(arg for op, arg in steps if op == "FROM")
    assert re.fullmatch(r"rayproject/ray:\$\{RAY_VERSION\}-py3\d+-gpu", base)
    import ray  # noqa: F401  (the version the project is tested on is the one the image carries)

    assert dockerfile_arg("RAY_VERSION") == ray.__version__
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    assert '".[ray,s3,gcs]"' in runs
    user = [arg for op, arg in steps if op == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root")
    env = dict(w.split("=", 1) for op, arg in steps if op == "ENV" for w in shlex.split(arg))
    assert env["RAY_AUTH_MODE"] == "token"


def test_no_secret_is_baked_into_the_image():
    secretish = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|PRIVATE)", re.I)
    for op, arg in instructions():
        if op in ("ENV", "ARG"):
            names = [w.split("=", 1)[0] for w in shlex.split(arg)]
            assert not [n for n in names if secretish.search(n)], (op, arg)
    assert "AKIA" not in DOCKERFILE.read_text()  # an AWS access key id


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, close enough here: a path is left out when it or a folder above it matches a
    pattern (``**/`` also at the top); ``!pattern`` takes a match back; the last match wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for raw in patterns:
        keep = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        variants = {pattern, pattern[3:]} if pattern.startswith("**/") else {pattern}
        if any(fnmatch.fnmatchcase(p, v) for p in prefixes for v in variants):
            verdict = not keep
    return verdict


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_the_build_context_keeps_what_the_install_needs_and_nothing_local():
    patterns = dockerignore()
    for left_out in (".venv", "out", ".git", ".venv/lib/x.py", "gendet/__pycache__/io.cpython-311.pyc", "gendet.egg-info"):
        assert ignored(left_out, patterns), left_out
    sources = [w for op, arg in instructions() if op == "COPY"
               for w in shlex.split(arg)[:-1] if not w.startswith("--")]
    assert {"pyproject.toml", "README.md", "gendet", "pipelines"} <= set(sources)
    tracked = subprocess.run(["git", "ls-files", *sources], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert len(tracked) > 50 and not [f for f in tracked if ignored(f, patterns)]
    assert any(f.endswith(".safetensors") for f in tracked)  # package data (the zoo's weights) goes in too


def test_the_context_check_bites():
    assert ignored("gendet/zoo/weights/ae.safetensors", dockerignore() + ["*.safetensors", "**/*.safetensors"])
    assert not ignored("gendet/io.py", [*dockerignore(), "gendet", "!gendet"])


def test_the_copied_files_are_what_pyproject_builds_from():
    text = (REPO / "pyproject.toml").read_text()
    readme = re.search(r'^readme = "([^"]+)"', text, re.M).group(1)
    packages = re.findall(r'"(\w+)\*"', re.search(r"^include = \[([^\]]+)\]", text, re.M).group(1))
    sources = {w for op, arg in instructions() if op == "COPY" for w in shlex.split(arg)[:-1]}
    assert packages == ["gendet", "pipelines"]
    assert readme in sources and set(packages) <= sources
