"""Rollout workers added and removed while a run goes: room that is not there yet stalls
nothing, a newcomer serves only verified weights, a leaving worker finishes its jobs first,
dead workers are still replaced, `rayrlhf scale` reaches the run; and a tiny PPO run scaled
1 -> 2 -> 1 from the command uses every prompt exactly once."""
import asyncio
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import ray
import torch
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

from rayrlhf.cli import main
from rayrlhf.config.resources import ResourcesSection, RoleResources
from rayrlhf.driver.controller import ScalingControl, controller_name
from rayrlhf.driver.fleet import RolloutFleet, SyncMismatchError
from rayrlhf.placement import ActorFactory, create_placement_groups, plan_placement
from rayrlhf.rollout.checksum import weights_checksum
from rayrlhf.rollout.types import Sample
from tests.driver.faults import is_dead, kill_and_wait
from tests.driver.tiny import local_ray, tiny_world
from tests.waiting import wait_for

PROMPTS, N = 6, 2
WEIGHTS = {"w": torch.full((4,), 3.0)}
TRAINER_PROBE = [12.0]  # what FakeWorker.probe_logprobs reports for WEIGHTS


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from local_ray(tmp_path_factory)


class FakeWorker:
    """A rollout worker without a model: each sample carries its seed, the weights are one
    tensor whose sum is the probe, and the worker keeps the order of the calls it served."""

    def __init__(self, name: str, gate=None, corrupt: str | None = None):
        self.name, self.gate, self.corrupt = name, gate, corrupt
        self.weights, self.calls = None, []

    def ready(self):
        return {"name": self.name}

    def generate(self, prompt_ids, n=None, seed=None):
        self.calls.append("generate")
        if self.gate is not None:
            ray.get(self.gate.wait.remote())
        return [Sample(p, k, ids, [seed % 1000], [0.0], "", "length", 0)
                for p, ids in enumerate(prompt_ids) for k in range(n)]

    CONCURRENCY_GROUPS = {"staging": 1}

    def stage_weights(self, named, version):
        self.staged = (named, version)
        return self.load_weights(named, version, log=False)

    def activate(self, version, probe_ids=None):
        self.calls.append(f"activate v{version}")
        self.load_weights(self.staged[0], version, log=False)
        return {"version": version, "probe": self.probe_logprobs(probe_ids) if probe_ids else None}

    def load_weights(self, named, version, log=True):
        if log:
            self.calls.append(f"load_weights v{version}")
        self.weights = {k: v + (1 if self.corrupt == "bytes" else 0) for k, v in named.items()}
        return {"checksum": weights_checksum(self.weights), "version": version, "bytes": 16}

    def probe_logprobs(self, ids):
        self.calls.append("probe")
        offset = 0.5 if self.corrupt == "probe" else 0.0
        return [float(self.weights["w"].sum()) + offset] if self.weights else [0.0]

    def call_log(self):
        return self.calls


@ray.remote(num_cpus=0)
class Gate:
    """Holds generate calls until the test opens it."""

    def __init__(self):
        self.event = asyncio.Event()

    async def wait(self):
        await self.event.wait()

    async def open(self):
        self.event.set()


@pytest.fixture
def fleets(cluster):
    """``make(run, n, **worker_kwargs)``: a fleet of FakeWorkers on a real placement plan, with
    0.5 CPU per worker; everything is removed after the test."""
    made = []

    def make(run, n=1, max_restarts=1, **worker_kwargs):
        res = ResourcesSection(rollout=RoleResources(num_workers=n, cpus_per_worker=0.5))
        plan = plan_placement(res, roles=["rollout"])
        groups = create_placement_groups(plan, run, timeout_s=60)
        factory = ActorFactory(FakeWorker, "rollout", plan.roles["rollout"], groups.for_role("rollout"), run)

        def worker(rank):
            kwargs = {k: v(rank) if callable(v) else v for k, v in worker_kwargs.items()}
            return factory(rank, {"name": f"{run}/rollout/{rank}", **kwargs})

        fleet = RolloutFleet(worker, n, N, seed=0, timeout=60, max_restarts=max_restarts, placement=factory)
        made.append((fleet, groups))
        fleet.wait_ready()
        fleet.sync(ray.put(WEIGHTS), weights_checksum(WEIGHTS), 1, [5, 6], TRAINER_PROBE, atol=1e-6)
        return fleet

    yield make
    for fleet, groups in made:
        fleet.shutdown()
        groups.remove()


def generate(fleet, step):
    """One job over PROMPTS prompts; asserts every prompt got exactly N samples, none twice."""
    samples, _ = fleet.collect(fleet.submit(step, list(range(PROMPTS)), [[1, p] for p in range(PROMPTS)]))
    assert collections.Counter(s.prompt_index for s in samples) == {p: N for p in range(PROMPTS)}
    assert len({(s.prompt_index, s.sample_index) for s in samples}) == len(samples)
    return samples


def _state(run_name, rank):
    (pg,) = [g for g in placement_group_table().values() if g["name"] == f"{run_name}/rollout/{rank}"]
    return pg["state"]


def test_scale_up_waits_for_room_without_stalling_and_serves_verified_weights(fleets):
    fleet = fleets("up")
    blocker = placement_group([{"CPU": 1.5}])  # with the first worker's 0.5, the cluster is full
    ray.get(blocker.ready(), timeout=60)
    fleet.resize(2)
    for step in range(3):  # the run goes on with one worker while the second one's room is pending
        m = fleet.poll_scaling()
        assert (m["rollout/workers"], m["rollout/workers_pending"]) == (1, 1)
        generate(fleet, step)
    remove_placement_group(blocker)  # capacity arrives (an autoscaler adding a node)
    wait_for(lambda: fleet.poll_scaling()["rollout/workers"] == 2, what="second worker serving")
    newcomer = fleet.workers[1]
    assert ray.get(newcomer.call_log.remote()) == ["load_weights v1", "probe"]  # verified before any shard
    generate(fleet, 3)
    assert ray.get(newcomer.call_log.remote())[-1] == "generate"
    fleet.resize(1)  # no job in flight: it leaves at once and its placement group goes
    assert fleet.poll_scaling()["rollout/workers"] == 1
    assert _state("up", 1) == "REMOVED"


@pytest.mark.parametrize("corrupt, error", [("bytes", "rollout/1 loaded weights with checksum"),
                                            ("probe", "rollout/1 serves other weights than the trainer")])
def test_a_newcomer_with_wrong_weights_never_serves(fleets, corrupt, error):
    fleet = fleets(f"bad-{corrupt}", corrupt=lambda rank: corrupt if rank == 1 else None)
    fleet.resize(2)
    with pytest.raises(SyncMismatchError, match=error):
        wait_for(lambda: fleet.poll_scaling()["rollout/workers"] == 2)
    assert len(fleet.workers) == 1


def test_scale_down_drains_jobs_in_flight_first(fleets):
    gate = Gate.remote()
    fleet = fleets("down", n=2, gate=gate)
    first = fleet.submit(0, list(range(PROMPTS)), [[1, p] for p in range(PROMPTS)])  # both workers busy
    fleet.resize(1)
    m = fleet.poll_scaling()
    assert (m["rollout/workers"], m["rollout/workers_draining"]) == (1, 1)
    leaving = first.workers[1].actor
    second = fleet.submit(1, list(range(PROMPTS)), [[1, p] for p in range(PROMPTS)])
    assert [w.rank for w in second.workers] == [0]  # no new shard for the leaving worker
    assert fleet.poll_scaling()["rollout/workers_draining"] == 1  # its job is not collected yet
    ray.get(gate.open.remote())
    samples, _ = fleet.collect(first)
    assert {s.prompt_index for s in samples} == set(range(PROMPTS)) and len(samples) == PROMPTS * N
    assert fleet.restarts == 0  # the leaving worker finished its shard itself
    assert fleet.poll_scaling()["rollout/workers_draining"] == 0
    wait_for(lambda: is_dead(leaving), what="the drained worker to be killed")
    assert len(fleet.collect(second)[0]) == PROMPTS * N


def test_dead_workers_are_replaced_and_dead_leavers_are_not(fleets):
    fleet = fleets("dead", n=2)
    kill_and_wait(fleet.workers[1])
    generate(fleet, 0)  # its shard is redone by a replacement with the current weights
    assert fleet.restarts == 1
    assert ray.get(fleet.workers[1].call_log.remote()) == ["load_weights v1", "probe", "generate"]
    job = fleet.submit(1, list(range(PROMPTS)), [[1, p] for p in range(PROMPTS)])
    fleet.resize(1)
    assert fleet.poll_scaling()["rollout/workers_draining"] == 1
    kill_and_wait(job.workers[1].actor)  # dies while leaving, its shard not collected
    samples, _ = fleet.collect(job)
    assert collections.Counter(s.prompt_index for s in samples) == {p: N for p in range(PROMPTS)}
    assert fleet.restarts == 1  # taken over by the serving worker, not replaced
    m = fleet.poll_scaling()
    assert (m["rollout/workers"], m["rollout/workers_draining"]) == (1, 0)


class CountingFleet:
    """What ScalingControl needs of a fleet: a target and one poll per iteration."""

    target = 1

    def resize(self, n):
        self.target = n

    def poll_scaling(self):
        return {"rollout/workers": 1.0, "rollout/workers_pending": float(self.target - 1),
                "rollout/workers_draining": 0.0, "rollout/workers_target": float(self.target)}


def test_scale_command_reaches_the_runs_controller(cluster, capsys):
    fleet = CountingFleet()
    with ScalingControl("cli-run", fleet) as control:
        assert main(["scale", "--run", "cli-run", "--rollout-workers", "3"]) == 0
        assert "run cli-run: rollout workers wanted 3" in capsys.readouterr().out
        assert control.poll(step=5, version=4)["rollout/workers_pending"] == 2 and fleet.target == 3
        wait_for(lambda: ray.get(control.actor.get_state.remote())["step"] == 5)
        assert main(["scale", "--run", "cli-run"]) == 0
        assert "wanted 3; now 1 serving, 2 starting, 0 leaving (step 5, policy version 4)" in capsys.readouterr().out
        assert main(["scale", "--run", "other", "--rollout-workers", "2"]) == 1
        err = capsys.readouterr().err
        assert "no run named 'other' is going in Ray namespace" in err and "runs going: cli-run (namespace" in err
        with pytest.raises(RuntimeError, match="a run named 'cli-run' is already going"):
            ScalingControl("cli-run", CountingFleet()).start()
        with pytest.raises(SystemExit):
            main(["scale", "--run", "cli-run", "--rollout-workers", "0"])
        ctx = ray.get_runtime_context()  # the command as a user runs it: a new process joining the cluster
        done = subprocess.run([sys.executable, "-m", "rayrlhf", "scale", "--run", "cli-run", "--rollout-workers", "2",
                               "--address", ctx.gcs_address, "--namespace", ctx.namespace],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "run cli-run: rollout workers wanted 2" in done.stdout
    with pytest.raises(ValueError):
        ray.get_actor(controller_name("cli-run"))
    assert main(["scale", "--run", "cli-run", "--rollout-workers", "2"]) == 1
    assert "no rayrlhf run is going" in capsys.readouterr().err


# -- a PPO run scaled from the command line ----------------------------------------------------------
STEPS, PPO_PROMPTS, PPO_N = 8, 4, 2


class ScaleScript:
    """`rayrlhf scale` issued from inside a run. Reward functions run on the driver between two
    polls of the controller, so each command lands at an iteration the test knows; where the run
    must not outpace the new worker, the script waits on that worker's own conditions (placement
    group placed, actor started), never on a clock."""

    def __init__(self, run: str):
        self.run, self.phase, self.commands = run, "start", []

    def __call__(self):
        try:
            state = ray.get(ray.get_actor(controller_name(self.run)).get_state.remote())
        except ValueError:  # the evaluation before training: no controller yet
            return
        if self.phase == "start" and state["step"] >= 1:
            self._scale(2, "growing")
        elif self.phase == "growing" and state["workers"] == 2:
            self._scale(1, "done")
        elif self.phase == "growing":
            self._let_the_newcomer_start()

    def _scale(self, n: int, phase: str):
        assert main(["scale", "--run", self.run, "--rollout-workers", str(n)]) == 0
        self.commands.append(n)
        self.phase = phase

    def _let_the_newcomer_start(self):
        try:
            ray.get(ray.util.get_placement_group(f"{self.run}/rollout/1").ready(), timeout=60)
            ray.get(ray.get_actor(f"{self.run}/rollout/1").ready.remote(), timeout=120)
        except ValueError:  # not asked for, or not started yet: the next iteration's poll does it
            pass


SCRIPT: dict = {"script": None}


def scripted_reward(prompt: str, response: str) -> float:
    if SCRIPT["script"] is not None:
        SCRIPT["script"]()
    from tests.driver import faults

    return faults.reward(prompt, response)


@pytest.fixture(scope="module")
def world(cluster, tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("scale_world"), n_prompts=40)


def _ppo_cfg(world, run_dir):
    from rayrlhf.config import load_config
    from rayrlhf.config.ppo import PPOConfig

    return load_config(PPOConfig, data={
        "policy": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/prompts_train.jsonl"], "eval": [f"{world}/data/prompts_eval.jsonl"],
                 "max_prompt_tokens": 96, "eval_limit": 4},
        "rewards": [{"name": "rule", "function": "tests.driver.test_scaling:scripted_reward"}],
        "rollout": {"backend": "hf", "max_new_tokens": 8, "n_samples": PPO_N, "max_model_len": 160},
        "ppo": {"total_steps": STEPS, "prompts_per_step": PPO_PROMPTS, "ppo_epochs": 1, "global_mini_batch_size": 8,
                "eval_every": STEPS, "checkpoint_every": STEPS, "rollout_mode": "async", "max_staleness": 1,
                "call_timeout_s": 120},
        "resources": {"trainer": {"cpus_per_worker": 0.25}, "critic": {"cpus_per_worker": 0.25},
                      "reference": {"cpus_per_worker": 0.25}, "rollout": {"num_workers": 1, "cpus_per_worker": 0.25}},
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir), "seed": 3},
    })


@pytest.mark.slow
def test_ppo_run_scaled_from_the_command_uses_every_prompt_once(world, tmp_path, capfd):
    from rayrlhf.driver.ppo_stage import run_ppo
    from rayrlhf.metrics import read_metrics
    from tests.driver import faults

    run_dir = str(tmp_path / "scaled")
    faults.reset()
    SCRIPT["script"] = script = ScaleScript("scaled")
    try:
        summary = run_ppo(_ppo_cfg(world, run_dir))
    finally:
        SCRIPT["script"] = None
    assert script.commands == [2, 1] and summary["steps"] == STEPS
    rows = read_metrics(run_dir)[1:]
    workers = [r["rollout/workers"] for r in rows]
    assert [w for i, w in enumerate(workers) if i == 0 or w != workers[i - 1]] == [1, 2, 1]
    draining = [r["rollout/workers_draining"] for r in rows]
    assert 1 in draining and draining[-1] == 0
    assert all(r["rollout/samples"] == PPO_PROMPTS * PPO_N for r in rows)
    assert summary["async/dropped_samples"] == 0
    ledger = [json.loads(x) for x in open(os.path.join(run_dir, "rollouts.jsonl"))]
    n_train = sum(1 for _ in open(f"{world}/data/prompts_train.jsonl"))
    order = np.random.default_rng([3, 0]).permutation(n_train).tolist()  # the run's first epoch (seed 3)
    assert [e["prompt_rows"] for e in ledger] == [order[s * PPO_PROMPTS:(s + 1) * PPO_PROMPTS] for s in range(STEPS)]
    used = [row for e in ledger for row in e["prompt_rows"]]
    assert len(set(used)) == len(used) == STEPS * PPO_PROMPTS  # each prompt once
    assert all(e["samples"] == PPO_PROMPTS * PPO_N for e in ledger)
    out = capfd.readouterr().out
    assert "rollout/1 joined, serving version" in out and "rollout/1 left after its last job was collected" in out
    with pytest.raises(ValueError):
        ray.get_actor(controller_name("scaled"))  # the run's controller ended with it


def test_a_resumed_run_asks_for_the_worker_count_of_its_checkpoint(capsys):
    from rayrlhf.driver.controller import restore_fleet_size

    class Fleet:
        target = 1

        def resize(self, n):
            self.target = n

    fleet = Fleet()
    restore_fleet_size(fleet, {"version": 3})  # a checkpoint from before the count was recorded
    assert fleet.target == 1 and capsys.readouterr().out == ""
    restore_fleet_size(fleet, {"version": 3, "rollout_workers": 3})
    assert fleet.target == 3
    assert "rollout workers: 1 -> 3 (the count at the checkpoint)" in capsys.readouterr().out


def test_the_same_stage_of_two_pipelines_goes_by_two_names_in_one_cluster(cluster, tmp_path, capsys):
    from rayrlhf.utils.ray_init import PIPELINE_FILE, run_name_of

    for pipeline in ("nightly", "ablation"):
        (tmp_path / pipeline / "ppo").mkdir(parents=True)
        (tmp_path / pipeline / PIPELINE_FILE).write_text("stages: []\n")
    (tmp_path / "alone").mkdir()
    names = [run_name_of(str(tmp_path / p / "ppo")) for p in ("nightly", "ablation")]
    assert names == ["nightly/ppo", "ablation/ppo"] and run_name_of(str(tmp_path / "alone")) == "alone"
    with ScalingControl(names[0], CountingFleet()), ScalingControl(names[1], CountingFleet()) as second:
        assert main(["scale", "--run", "ablation/ppo", "--rollout-workers", "2"]) == 0
        assert "run ablation/ppo: rollout workers wanted 2" in capsys.readouterr().out
        assert second.poll(step=1, version=1)["rollout/workers_target"] == 2.0
