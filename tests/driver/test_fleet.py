"""The rollout fleet's safety nets: a corrupted sync is caught, a hanging call is named."""
import pytest
import ray
import torch

from rayrlhf.driver.fleet import PhaseTimeout, RolloutFleet, SyncMismatchError
from rayrlhf.models import load_causal_lm
from rayrlhf.rollout.checksum import weights_checksum
from rayrlhf.rollout.config import RolloutSection
from rayrlhf.rollout.worker import RolloutWorker
from tests.driver.tiny import local_ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from local_ray(tmp_path_factory)


class SlowWorker:
    def ready(self):
        return {}

    def generate(self, prompt_ids, n=None, seed=None):
        import time

        time.sleep(30)


def _fleet(tiny_model_dir, timeout=60.0):
    cfg = RolloutSection(backend="hf", max_new_tokens=4, max_model_len=128)
    make = lambda rank: ray.remote(num_cpus=0.5, concurrency_groups=RolloutWorker.CONCURRENCY_GROUPS)(
        RolloutWorker).remote(tiny_model_dir, cfg, name=f"t/rollout/{rank}")
    fleet = RolloutFleet(make, 1, 1, seed=0, timeout=timeout, max_restarts=1)
    fleet.wait_ready()
    return fleet


def test_sync_verifies_checksum_and_probe(cluster, tiny_model_dir):
    fleet = _fleet(tiny_model_dir)
    weights = {k: v.clone() for k, v in load_causal_lm(tiny_model_dir).state_dict().items()}
    weights["model.norm.weight"] += 0.5
    good = weights_checksum(weights)
    metrics = fleet.sync(ray.put(weights), good, version=1)
    assert metrics["sync/bytes"] == sum(t.numel() * t.element_size() for t in weights.values())

    corrupted = dict(weights)
    corrupted["model.layers.0.mlp.up_proj.weight"] = weights["model.layers.0.mlp.up_proj.weight"] * 1.01
    with pytest.raises(SyncMismatchError, match=r"rollout/0 loaded weights with checksum .* the trainer sent"):
        fleet.sync(ray.put(corrupted), good, version=2)


def test_probe_catches_weights_that_differ_from_the_trainer(cluster, tiny_model_dir):
    fleet = _fleet(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ids = [1, 5, 9, 12, 20, 7]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    trainer_probe = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).flatten().tolist()
    ok = fleet.sync(ray.put(weights), weights_checksum(weights), 1, ids, trainer_probe, atol=1e-4)
    assert ok["sync/probe_max_diff"] < 1e-4
    off = [x + 0.01 for x in trainer_probe]  # the trainer holds other weights than it sent
    with pytest.raises(SyncMismatchError, match="probe logprobs differ by 0.01"):
        fleet.sync(ray.put(weights), weights_checksum(weights), 2, ids, off, atol=1e-4)


def test_a_hanging_call_names_the_actor_and_phase(cluster):
    make = lambda rank: ray.remote(num_cpus=0.1)(SlowWorker).remote()
    fleet = RolloutFleet(make, 1, 1, seed=0, timeout=1.0, max_restarts=0)
    job = fleet.submit(0, [0], [[1, 2, 3]])
    with pytest.raises(PhaseTimeout, match=r"rollout/0 in phase generate did not answer within 1 s"):
        fleet.collect(job)


def test_an_evaluation_survives_a_dead_worker_with_the_same_samples(cluster, tiny_model_dir):
    """Held-out generation goes through the fleet: a dead worker is replaced and its shard
    redone with the same seed, so the samples are those of a fleet that never lost one."""
    prompts = [[1, 5, 9], [1, 7, 3, 2], [4, 4, 8]]
    seed_of = lambda start: 1000 + start  # noqa: E731
    healthy = _fleet(tiny_model_dir)
    want = [[s.response_ids for s in part] for part in healthy.generate(prompts, 2, seed_of)]
    healthy.shutdown()
    fleet = _fleet(tiny_model_dir)
    ray.kill(fleet.workers[0], no_restart=True)
    got = [[s.response_ids for s in part] for part in fleet.generate(prompts, 2, seed_of)]
    assert fleet.restarts == 1 and got == want and sum(len(p) for p in got) == 2 * len(prompts)


def test_judge_logprobs_survive_a_dead_worker(cluster, tiny_model_dir):
    prompts, choices = [[1, 5, 9], [1, 7, 3, 2], [4, 4, 8]], [[3, 4], [5, 6], [3, 4]]
    healthy = _fleet(tiny_model_dir)
    want = healthy.choice_logprobs(prompts, choices)
    healthy.shutdown()
    fleet = _fleet(tiny_model_dir)
    ray.kill(fleet.workers[0], no_restart=True)
    got = fleet.choice_logprobs(prompts, choices)
    assert fleet.restarts == 1 and torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-6)
