"""Placement: pure planning, capacity checks, and real placement on a one-node Ray cluster
that advertises 4 fake GPUs (actors that ask for GPUs get CUDA_VISIBLE_DEVICES, no device)."""
from __future__ import annotations

import shutil
import tempfile
import time

import pytest
import ray
import yaml

from rayrlhf.config.loader import ConfigError, load_config
from rayrlhf.config.resources import ResourcesSection, RoleResources
from rayrlhf.placement import (
    ActorCallError,
    ActorCallTimeout,
    PlacementTimeoutError,
    Probe,
    RayActorGroup,
    check_fits,
    create_placement_groups,
    format_plan,
    plan_main,
    plan_placement,
)
from rayrlhf.placement.cli import PlanConfig


def section(rewards=None, **roles) -> ResourcesSection:
    """Defaults, with the given roles replaced; the critic shares the trainer's bundles unless
    a test says otherwise (the common GPU layout)."""
    roles.setdefault("critic", {"colocate_with": "trainer"})
    return ResourcesSection(**{k: RoleResources(**v)
                               for k, v in roles.items()},
                            rewards={k: RoleResources(**v) for k, v in (rewards or {}).items()})


# -- pure planning ---------------------------------------------------------------------------------

def test_colocated_roles_share_bundles_with_summed_resources():
    res = section(trainer=dict(num_workers=2, gpus_per_worker=0.5, cpus_per_worker=1.0),
                  critic=dict(num_workers=2, gpus_per_worker=0.25, cpus_per_worker=0.5, colocate_with="trainer"),
                  reference=dict(num_workers=1, gpus_per_worker=0.25, cpus_per_worker=0.25, colocate_with="trainer"),
                  rollout=dict(num_workers=3, gpus_per_worker=1, cpus_per_worker=2))
    plan = plan_placement(res)
    assert list(plan.groups) == ["trainer", "rollout"]
    trainer = plan.groups["trainer"]
    assert trainer.roles == ["trainer", "critic", "reference"]
    # bundle 0: trainer/0 + critic/0 + reference/0; bundle 1: trainer/1 + critic/1
    assert trainer.bundles == [{"CPU": 1.75, "GPU": 1.0}, {"CPU": 1.5, "GPU": 0.75}]
    assert [(w.rank, w.bundle_index) for w in plan.roles["critic"].workers] == [(0, 0), (1, 1)]
    assert [(w.rank, w.bundle_index) for w in plan.roles["reference"].workers] == [(0, 0)]
    assert plan.group_of("critic") == plan.group_of("reference") == "trainer"
    assert plan.roles["critic"].workers[1].num_gpus == 0.25
    assert plan.groups["rollout"].bundles == [{"CPU": 2.0, "GPU": 1.0}] * 3
    assert [w.rank for w in plan.roles["rollout"].workers] == [0, 1, 2]
    assert plan.demand() == {"CPU": 9.25, "GPU": 4.75}


def test_reward_replicas_wrap_onto_host_bundles_and_node_type_is_requested():
    res = section(rewards={"helpfulness": dict(num_workers=2, gpus_per_worker=0.5, cpus_per_worker=0.25,
                                               node_type="rm_node"),
                           "safety": dict(num_workers=3, gpus_per_worker=0.25, cpus_per_worker=0.1,
                                          colocate_with="reward/helpfulness")})
    plan = plan_placement(res)
    group = plan.groups["reward/helpfulness"]
    assert group.roles == ["reward/helpfulness", "reward/safety"]
    assert [w.bundle_index for w in plan.roles["reward/safety"].workers] == [0, 1, 0]
    assert group.bundles == [{"CPU": 0.45, "GPU": 1.0, "rm_node": 0.001},
                             {"CPU": 0.35, "GPU": 0.75, "rm_node": 0.001}]
    assert plan.roles["reward/helpfulness"].workers[1].resources == {"rm_node": 0.001}
    assert plan.roles["reward/safety"].workers[0].resources == {}


def test_only_selected_roles_are_planned():
    plan = plan_placement(section(critic=dict(colocate_with=None)), roles=["rollout", "reference"])
    assert list(plan.roles) == ["rollout", "reference"]
    with pytest.raises(ConfigError, match=r"critic joins trainer's placement group, which this plan leaves out"):
        plan_placement(section(), roles=["critic"])


def test_colocation_that_cannot_fit_is_rejected_with_what_to_change():
    res = section(trainer=dict(num_workers=2, gpus_per_worker=1),
                  critic=dict(gpus_per_worker=1, colocate_with="trainer"))
    with pytest.raises(ConfigError) as e:
        plan_placement(res)
    msg = str(e.value)
    assert "resources.critic.colocate_with" in msg
    assert "2 GPUs (trainer 1 + critic 1)" in msg
    assert "sum to at most 1" in msg and "resources.critic.colocate_with: null" in msg
    # halves fit
    plan_placement(section(trainer=dict(gpus_per_worker=0.5),
                           critic=dict(gpus_per_worker=0.5, colocate_with="trainer")))


def test_unknown_roles_cycles_and_bad_counts_are_reported():
    unknown = r"resources.critic.colocate_with: unknown role 'trainr'; did you mean 'trainer'"
    with pytest.raises(ConfigError, match=unknown):
        plan_placement(section(critic=dict(colocate_with="trainr")))
    with pytest.raises(ConfigError, match=r"unknown role 'policy'"):
        plan_placement(section(), roles=["policy"])
    with pytest.raises(ConfigError) as e:
        plan_placement(section(trainer=dict(colocate_with="reference"), reference=dict(colocate_with="trainer")))
    assert str(e.value).count("colocation cycle") == 1
    assert "trainer -> reference -> trainer" in str(e.value)
    with pytest.raises(ConfigError) as e:
        plan_placement(section(rollout=dict(num_workers=0), rewards={"safety": dict(cpus_per_worker=0)}))
    assert "resources.rollout.num_workers: must be a whole number of at least 1, got 0" in str(e.value)
    assert "resources.rewards.safety.cpus_per_worker and gpus_per_worker are both 0" in str(e.value)


def test_resources_section_loads_from_yaml_mapping():
    cfg = load_config(PlanConfig, data={"resources": {
        "trainer": {"num_workers": 2, "gpus_per_worker": 1},
        "critic": {"cpus_per_worker": 0.25},
        "rewards": {"safety": {"gpus_per_worker": 0.5, "strategy": "SPREAD"}}}})
    assert cfg.resources.trainer.num_workers == 2
    assert cfg.resources.critic.colocate_with is None  # every role on its own placement group by default
    assert cfg.resources.critic.cpus_per_worker == 0.25
    assert cfg.resources.rewards["safety"] == RoleResources(gpus_per_worker=0.5, strategy="SPREAD")
    typo = r"resources.rewards.safety.num_worker: unknown key; did you mean 'num_workers'"
    with pytest.raises(ConfigError, match=typo):
        load_config(PlanConfig, data={"resources": {"rewards": {"safety": {"num_worker": 2}}}})


# -- capacity checks -------------------------------------------------------------------------------

def test_check_fits_names_the_role_short_of_gpus():
    plan = plan_placement(section(rollout=dict(num_workers=4, gpus_per_worker=1)))
    assert check_fits(plan, {"CPU": 16, "GPU": 2}) == [
        "rollout needs 4 GPUs in total, the cluster has 2: lower resources.rollout.num_workers "
        "or resources.rollout.gpus_per_worker"]
    assert check_fits(plan, {"CPU": 16, "GPU": 4}) == []
    plan = plan_placement(section(trainer=dict(num_workers=2, gpus_per_worker=1),
                                  rollout=dict(num_workers=4, gpus_per_worker=1)))
    (msg,) = check_fits(plan, {"CPU": 16, "GPU": 4})
    assert msg.startswith("trainer, rollout need 6 GPUs in total (trainer 2, rollout 4), the cluster has 4")


def test_check_fits_per_node_and_node_types():
    nodes = [{"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 2}]
    packed = plan_placement(section(trainer=dict(num_workers=4, gpus_per_worker=1)))
    assert check_fits(packed, nodes) == []
    strict = plan_placement(section(trainer=dict(num_workers=4, gpus_per_worker=1, strategy="STRICT_PACK")))
    (msg,) = check_fits(strict, nodes)
    assert "placement group trainer is STRICT_PACK and needs CPU 5, GPU 4 on one node" in msg
    big = plan_placement(section(rollout=dict(gpus_per_worker=4)))
    assert any("bundle 0 of placement group rollout (rollout/0) asks for CPU 1, GPU 4" in m
               for m in check_fits(big, nodes))
    spread = plan_placement(section(rollout=dict(num_workers=3, strategy="STRICT_SPREAD")))
    assert any("STRICT_SPREAD with 3 bundles" in m and "only 2 nodes" in m for m in check_fits(spread, nodes))
    typed = plan_placement(section(rollout=dict(num_workers=3, gpus_per_worker=1, node_type="rollout_node")))
    (msg,) = check_fits(typed, nodes)
    assert "rollout asks for nodes of type rollout_node, but no node has the custom resource" in msg
    labelled = [{"CPU": 8, "GPU": 2, "rollout_node": 1}, {"CPU": 8, "GPU": 2}]
    (msg,) = check_fits(typed, labelled)
    assert msg.startswith("rollout needs 3 GPUs on nodes of type rollout_node, which have 2 in total")


# -- on a Ray cluster with fake GPUs ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    tmp = tempfile.mkdtemp(prefix="rp", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, _temp_dir=tmp,
             logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


FAKE_GPU_PLAN = dict(
    trainer=dict(num_workers=2, gpus_per_worker=1, cpus_per_worker=0.25),
    critic=dict(num_workers=1, cpus_per_worker=0.1, colocate_with="trainer"),
    rollout=dict(num_workers=2, gpus_per_worker=1, cpus_per_worker=0.25),
    reference=dict(cpus_per_worker=0.2),
    rewards={"helpfulness": dict(num_workers=2, cpus_per_worker=0.1),
             "safety": dict(cpus_per_worker=0.1, colocate_with="reward/helpfulness")},
)


@pytest.fixture(scope="module")
def placed(cluster):
    plan = plan_placement(section(**FAKE_GPU_PLAN))
    groups = create_placement_groups(plan, "t-placed", timeout_s=60)
    actors = {role: RayActorGroup(Probe, role, plan.roles[role], groups[plan.group_of(role)], "run1",
                                  timeout_s=120)
              for role in plan.roles}
    where = {role: g.where() for role, g in actors.items()}
    yield plan, groups, actors, where
    for g in actors.values():
        g.kill()
    groups.remove()


def test_actors_run_in_their_planned_bundles_with_planned_resources(placed):
    plan, groups, actors, where = placed
    nodes = groups.bundle_nodes()
    gpu_owner = {}
    for role, rp in plan.roles.items():
        pg_id = groups[plan.group_of(role)].id.hex()
        assert [w["rank"] for w in where[role]] == list(range(rp.world_size))
        for w, info in zip(rp.workers, where[role]):
            assert info["placement_group_id"] == pg_id, (role, w.rank)
            assert info["bundle_index"] == w.bundle_index, (role, w.rank)
            assert info["node_id"] == nodes[plan.group_of(role)][w.bundle_index]
            assert info["resources"].get("CPU", 0.0) == pytest.approx(w.num_cpus)
            assert info["resources"].get("GPU", 0.0) == pytest.approx(w.num_gpus)
            assert len(info["gpu_ids"]) == int(w.num_gpus), (role, w.rank, info["gpu_ids"])
            for gpu in info["gpu_ids"]:
                assert gpu not in gpu_owner, f"GPU {gpu} given to {gpu_owner.get(gpu)} and {role}/{w.rank}"
                gpu_owner[gpu] = f"{role}/{w.rank}"
            if w.num_gpus:
                assert info["cuda_visible_devices"] == ",".join(info["gpu_ids"])
    assert sorted(gpu_owner) == ["0", "1", "2", "3"]
    # the constructor got rank and world size
    assert actors["reward/helpfulness"].call("where")[1]["world_size"] == 2
    assert [r["rank"] for r in actors["trainer"].call("where")] == [0, 1]


def test_actor_names_are_run_role_rank(placed):
    plan, groups, actors, where = placed
    expected = {f"run1/{role}/{w.rank}" for role, rp in plan.roles.items() for w in rp.workers}
    assert {w["actor_name"] for ws in where.values() for w in ws} == expected
    assert "run1/reward/helpfulness/1" in expected
    named = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert expected <= named
    handle = ray.get_actor("run1/rollout/1")
    assert ray.get(handle.__ray_call__.remote(lambda self: self.rank)) == 1


def test_format_plan_names_the_nodes_the_actors_report(placed):
    plan, groups, actors, where = placed
    text = format_plan(plan, groups.bundle_nodes(), ray.nodes())
    node_ids = {w["node_id"] for ws in where.values() for w in ws}
    assert len(node_ids) == 1
    (node_id,) = node_ids
    assert node_id in text
    lines = text.splitlines()
    for name, group in plan.groups.items():
        for i in range(len(group.bundles)):
            first = plan.roles_on_bundle(name, i)[0]
            (line,) = [line for line in lines if f" {first} " in f" {line} "]
            assert node_id[:8] in line.split(), line
    assert "total: 4 placement groups, 7 bundles, 9 actors; CPU 1.6, GPU 4" in text


def test_calls_time_out_and_fail_naming_role_rank_and_method(placed):
    plan, groups, actors, where = placed
    trainer = actors["trainer"]
    trainer.timeout_s = 1.0
    try:
        t0 = time.monotonic()
        late = r"trainer: sleep did not return within 1 s on ranks 0, 1 \(actor run1/trainer/0\)"
        with pytest.raises(ActorCallTimeout, match=late):
            trainer.call("sleep", 3.0)
        assert time.monotonic() - t0 < 2.5
    finally:
        trainer.timeout_s = 120.0
    refs = trainer.call_async("echo", "x")
    assert trainer.get(refs, "echo") == ["x", "x"]
    with pytest.raises(ActorCallError, match=r"trainer rank 0 \(run1/trainer/0\): fail failed: .*boom"):
        trainer.call("fail", "boom")


def test_master_addr_port_lets_the_trainer_ranks_rendezvous(placed):
    plan, groups, actors, where = placed
    addr, port = actors["trainer"].master_addr_port()
    assert addr == "127.0.0.1" and 0 < port < 65536
    assert actors["trainer"].call("all_reduce_rank", addr, port) == [1, 1]


def test_per_rank_kwargs_and_replacement_actors(cluster):
    plan = plan_placement(section(reference=dict(num_workers=2, cpus_per_worker=0.05)), roles=["reference"])
    groups = create_placement_groups(plan, "t-kw", timeout_s=60)
    try:
        g = RayActorGroup(Probe, "reference", plan.roles["reference"], groups["reference"], "run2",
                          actor_kwargs={"tag": "common"}, kwargs_of_rank=lambda r: {"rank": 10 + r},
                          timeout_s=60)
        # the caller's rank wins and world_size is then left to the class's default
        assert [(w["rank"], w["world_size"]) for w in g.call("where")] == [(10, 1), (11, 1)]
        assert g.call("echo", "ok") == ["ok", "ok"]
        g.kill()
        make = RayActorGroup.factory(Probe, "reference", plan.roles["reference"], groups["reference"], "run3")
        first = make(1, {})
        info = ray.get(first.where.remote(), timeout=60)
        assert (info["actor_name"], info["bundle_index"], info["rank"], info["world_size"]) == \
            ("run3/reference/1", 1, 1, 2)
        ray.kill(first)
        info = ray.get(make(1, {}).where.remote(), timeout=60)  # waits for the bundle to be freed
        assert (info["actor_name"], info["bundle_index"]) == ("run3/reference/1#1", 1)
    finally:
        groups.remove()


def test_timeout_names_the_group_and_what_is_missing(placed):
    plan = plan_placement(section(trainer=dict(num_workers=2, gpus_per_worker=1, cpus_per_worker=0.1)),
                          roles=["trainer"])
    t0 = time.monotonic()
    with pytest.raises(PlacementTimeoutError) as e:
        create_placement_groups(plan, "t-late", timeout_s=1.0)
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "t-late/trainer (roles trainer; 2 bundles, PACK" in msg
    assert "missing: GPU 2" in msg
    states = [t["state"] for t in ray.util.placement_group_table().values() if t["name"] == "t-late/trainer"]
    assert states and all(s == "REMOVED" for s in states)


def test_non_blocking_groups_return_at_once_and_report_pending(cluster):
    plan = plan_placement(section(rollout=dict(cpus_per_worker=0.1, node_type="autoscaled_node")),
                          roles=["rollout"])
    t0 = time.monotonic()
    groups = create_placement_groups(plan, "t-nb", wait=False)
    try:
        assert time.monotonic() - t0 < 2
        assert not groups.is_ready() and groups.pending() == ["rollout"]
        with pytest.raises(PlacementTimeoutError, match=r"t-nb/rollout .*state (INFEASIBLE|PENDING)"):
            groups.wait(0.5)
    finally:
        groups.remove()


def write_config(tmp_path, resources: dict) -> str:
    """A PPO config (rayrlhf plan reads the whole config: placement and memory)."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"policy": {"name_or_path": "Qwen/Qwen2.5-0.5B"}, "data": {"train": ["p.jsonl"]},
                                    "rewards": [{"name": "brevity", "function": "rayrlhf.rules:length_penalty"}],
                                    "ppo": {"global_mini_batch_size": 32}, "resources": resources}))
    return str(path)


def test_plan_cli_exits_1_naming_the_role_when_the_cluster_is_too_small(cluster, tmp_path, capsys):
    path = write_config(tmp_path, {"rollout": {"num_workers": 2, "gpus_per_worker": 1}})
    assert plan_main(["--config", path, "resources.rollout.num_workers=8"]) == 1
    out, err = capsys.readouterr()
    assert "rollout needs 8 GPUs in total, the cluster has 4: lower resources.rollout.num_workers" in err
    assert "rollout/7" in out
    assert plan_main(["--config", path, "--no-cluster", "resources.rollout.num_workers=8"]) == 0
    assert plan_main(["--config", path, "resources.rollout.num_workers=0"]) == 2
    assert "resources.rollout.num_workers: must be a whole number" in capsys.readouterr().err


def test_plan_cli_places_the_bundles_on_the_cluster(cluster, tmp_path, capsys):
    path = write_config(tmp_path, {"trainer": {"cpus_per_worker": 0.05}, "critic": {"cpus_per_worker": 0.05},
                                   "rollout": {"cpus_per_worker": 0.05}, "reference": {"cpus_per_worker": 0.05}})
    assert plan_main(["--config", path]) == 0
    out = capsys.readouterr().out
    node_id = ray.get_runtime_context().get_node_id()
    assert node_id in out and f"{node_id[:8]}  trainer/0" in out
    assert "total: 4 placement groups, 4 bundles, 4 actors; CPU 0.2" in out  # one group per role
    leftover = [t for t in ray.util.placement_group_table().values()
                if t["name"].startswith("rayrlhf-plan-") and t["state"] != "REMOVED"]
    assert not leftover
