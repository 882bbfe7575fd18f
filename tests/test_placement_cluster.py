"""Placement on several raylets in one machine (``ray.cluster_utils.Cluster``): a head, a node
labelled trainer_node and one labelled rollout_node, each with 2 fake GPUs. Its own module:
the cluster replaces the single-node ``ray.init`` of test_placement.py."""
from __future__ import annotations

import shutil
import tempfile
import time

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from rayrlhf.config.resources import ResourcesSection, RoleResources
from rayrlhf.placement import (
    Probe,
    RayActorGroup,
    check_fits,
    create_placement_groups,
    format_plan,
    plan_main,
    plan_placement,
)


@pytest.fixture(scope="module")
def cluster():
    tmp = tempfile.mkdtemp(prefix="rpc", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": tmp, "include_dashboard": False})
    trainer = c.add_node(num_cpus=1, num_gpus=2, resources={"trainer_node": 1})
    rollout = c.add_node(num_cpus=1, num_gpus=2, resources={"rollout_node": 1})
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    yield c, {"head": c.head_node.node_id, "trainer": trainer.node_id, "rollout": rollout.node_id}
    ray.shutdown()
    c.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def labelled_plan():
    return plan_placement(ResourcesSection(
        trainer=RoleResources(num_workers=2, gpus_per_worker=1, cpus_per_worker=0.25, node_type="trainer_node"),
        critic=RoleResources(cpus_per_worker=0.1, colocate_with="trainer"),
        rollout=RoleResources(num_workers=2, gpus_per_worker=1, cpus_per_worker=0.25, node_type="rollout_node"),
        reference=RoleResources(cpus_per_worker=0.1),
        rewards={"safety": RoleResources(cpus_per_worker=0.1, colocate_with="trainer"),
                 "spread": RoleResources(num_workers=3, cpus_per_worker=0.05, strategy="STRICT_SPREAD")},
    ))


def test_node_types_put_roles_on_their_nodes(cluster):
    _, node = cluster
    plan = labelled_plan()
    groups = create_placement_groups(plan, "c-run", timeout_s=60)
    actors = {}
    try:
        actors = {role: RayActorGroup(Probe, role, plan.roles[role], groups[plan.group_of(role)], "c-run",
                                      timeout_s=120) for role in plan.roles}
        where = {role: g.where() for role, g in actors.items()}
        for role in ("trainer", "critic", "reward/safety"):
            assert {w["node_id"] for w in where[role]} == {node["trainer"]}, role
        assert {w["node_id"] for w in where["rollout"]} == {node["rollout"]}
        assert sorted(g for w in where["trainer"] + where["rollout"] for g in w["gpu_ids"]) == ["0", "0", "1", "1"]
        bundle_nodes = groups.bundle_nodes()
        assert bundle_nodes["trainer"] == [node["trainer"]] * 2
        assert bundle_nodes["rollout"] == [node["rollout"]] * 2
        text = format_plan(plan, bundle_nodes, ray.nodes())
        for line in text.splitlines():
            if " trainer/" in f" {line}":
                assert node["trainer"][:8] in line.split(), line
            if " rollout/" in f" {line}":
                assert node["rollout"][:8] in line.split(), line
        assert node["trainer"] in text and node["rollout"] in text
        addr, port = actors["trainer"].master_addr_port()
        assert addr == "127.0.0.1"  # both ranks share the trainer node
        assert actors["trainer"].call("all_reduce_rank", addr, port) == [1, 1]
        spread = actors["reward/spread"]
        assert {w["node_id"] for w in where["reward/spread"]} == set(node.values())
        addr, port = spread.master_addr_port()
        assert addr == ray.util.get_node_ip_address() and addr != "127.0.0.1"
        assert spread.call("all_reduce_rank", addr, port) == [3, 3, 3]
    finally:
        for g in actors.values():
            g.kill()
        groups.remove()


def test_check_fits_counts_only_the_labelled_nodes(cluster):
    plan = plan_placement(ResourcesSection(
        rollout=RoleResources(num_workers=3, gpus_per_worker=1, cpus_per_worker=0.1, node_type="rollout_node")),
        roles=["rollout"])
    (msg,) = check_fits(plan, ray.nodes())
    assert msg.startswith("rollout needs 3 GPUs on nodes of type rollout_node, which have 2 in total (1 node)")
    assert check_fits(plan, ray.cluster_resources()) == []  # the totals alone would hide it


def test_plan_cli_reports_the_nodes_and_probes_them(cluster, tmp_path, capsys):
    _, node = cluster
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"rollout": {"backend": "auto"}, "resources": {
        "trainer": {"num_workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 0.25, "node_type": "trainer_node"},
        "critic": {"cpus_per_worker": 0.1},
        "rollout": {"num_workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 0.25, "node_type": "rollout_node"},
        "reference": {"cpus_per_worker": 0.1}}}))
    assert plan_main(["--config", str(path), "--probe"]) == 0
    out = capsys.readouterr().out
    assert f"{node['trainer'][:8]}  trainer/0" in out and f"{node['rollout'][:8]}  rollout/1" in out
    assert "probe: 6 actors started, 0 mismatches with the plan" in out
    assert plan_main(["--config", str(path), "resources.rollout.num_workers=3"]) == 1
    assert "rollout needs 3 GPUs on nodes of type rollout_node" in capsys.readouterr().err


def test_a_pending_group_is_placed_when_a_node_joins(cluster):
    c, _ = cluster
    plan = plan_placement(ResourcesSection(reference=RoleResources(cpus_per_worker=0.1, node_type="late_node")),
                          roles=["reference"])
    t0 = time.monotonic()
    groups = create_placement_groups(plan, "c-late", wait=False)
    try:
        assert time.monotonic() - t0 < 2
        assert groups.pending() == ["reference"]
        late = c.add_node(num_cpus=1, resources={"late_node": 1})
        groups.wait(60)
        assert groups.is_ready()
        assert groups.bundle_nodes() == {"reference": [late.node_id]}
    finally:
        groups.remove()
