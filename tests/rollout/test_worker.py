"""The rollout worker: backend choice, version bookkeeping, and running as a Ray actor."""
import dataclasses
import os

import pytest

from rayrlhf.rollout import RolloutSection, RolloutWorker, make_backend, probe_matches, weights_checksum
from rayrlhf.rollout import worker as worker_mod
from tests.rollout.conftest import (greedy, load_model, perturbed_state_dict, reference_logprobs, vllm_importable,
                                   weights_that_change_greedy)

CFG = RolloutSection(backend="hf", temperature=0.0, max_new_tokens=12, max_model_len=64, cpu_kv_cache_gib=0.25)


def test_make_backend_follows_the_config(policy_dir, monkeypatch):
    import rayrlhf.rollout.vllm_backend as vllm_backend

    class FakeVLLM:
        name = "vllm"

        def __init__(self, *args):
            self.args = args

    monkeypatch.setattr(vllm_backend, "VLLMBackend", FakeVLLM)
    auto = dataclasses.replace(CFG, backend="auto")
    monkeypatch.setattr(worker_mod, "vllm_available", lambda: True)
    assert make_backend(policy_dir, auto).name == "vllm"
    assert make_backend(policy_dir, CFG).name == "hf"
    monkeypatch.setattr(worker_mod, "vllm_available", lambda: False)
    assert make_backend(policy_dir, auto).name == "hf"
    with pytest.raises(ValueError, match="top_p"):
        make_backend(policy_dir, dataclasses.replace(CFG, top_p=0.0))


def test_worker_tracks_versions(policy_dir, prompts, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    w = RolloutWorker(policy_dir, CFG, name="run/rollout/0")
    assert w.ready() == {"name": "run/rollout/0", "backend": "hf", "version": 0, "threads": 1}
    assert repr(w) == "RolloutWorker(run/rollout/0, hf, v0)"
    trainer = load_model(policy_dir)
    report = w.load_weights(perturbed_state_dict(trainer, seed=2), version=7)
    assert report["version"] == 7 and repr(w) == "RolloutWorker(run/rollout/0, hf, v7)"
    assert {s.policy_version for s in w.generate(prompts, version=7)} == {7}
    with pytest.raises(RuntimeError, match="version 6"):
        w.generate(prompts, version=6)


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")), log_to_driver=False)
    yield ray
    ray.shutdown()


def test_worker_as_a_ray_actor(ray_session, policy_dir, prompts, tokenizer):
    ray = ray_session
    cfg = dataclasses.replace(CFG, backend="auto")
    actor = ray.remote(num_cpus=1)(RolloutWorker).remote(policy_dir, cfg, name="test/rollout/0")
    info = ray.get(actor.ready.remote(), timeout=120)
    assert info["threads"] == 1 and info["version"] == 0
    assert info["backend"] == ("vllm" if vllm_importable() else "hf")
    inside = ray.get(actor.__ray_call__.remote(
        lambda self: (repr(self), os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING"))))
    assert inside[0] == f"RolloutWorker(test/rollout/0, {info['backend']}, v0)"
    if info["backend"] == "vllm":
        assert inside[1] == "0"

    trainer = load_model(policy_dir)
    trainer.load_state_dict(perturbed_state_dict(trainer, seed=3, scale=0.3))
    sd = trainer.state_dict()
    report = ray.get(actor.load_weights.remote(sd, 1))
    assert report["checksum"] == weights_checksum(sd) and report["version"] == 1
    samples = ray.get(actor.generate.remote(prompts, version=1))
    for s in samples:
        assert s.response_ids == greedy(trainer, s.prompt_ids, 12, tokenizer.eos_token_id)
    seq = prompts[0] + samples[0].response_ids
    probe = ray.get(actor.probe_logprobs.remote(seq))
    assert probe_matches(probe, reference_logprobs(trainer, seq[:1], seq[1:]), atol=1e-4)[0]


def test_auto_says_which_engine_and_an_explicit_vllm_never_falls_back(policy_dir, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if vllm could not be imported here
    backend = make_backend(policy_dir, dataclasses.replace(CFG, backend="auto"))
    assert backend.name == "hf"
    out = capsys.readouterr().out
    assert "rollout.backend auto: vLLM does not import (ModuleNotFoundError: import of vllm" in out
    assert "using hf" in out
    with pytest.raises(ImportError):
        make_backend(policy_dir, dataclasses.replace(CFG, backend="vllm"))


def test_staged_weights_take_effect_only_when_activated(policy_dir, prompts, tokenizer, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    w = RolloutWorker(policy_dir, CFG, name="run/rollout/0")
    first = w.generate(prompts)
    before = [s.response_ids for s in first]
    trainer, new = weights_that_change_greedy(policy_dir, first, tokenizer.eos_token_id, CFG.max_new_tokens)
    new = {k: v.clone() for k, v in new.items()}
    staged = w.stage_weights(new, version=1)
    assert staged["checksum"] == weights_checksum(new) and staged["version"] == 1
    # Staged, not served: generation still uses version 0, token for token.
    held = w.generate(prompts)
    assert [s.response_ids for s in held] == before and {s.policy_version for s in held} == {0}
    seq = prompts[0] + held[0].response_ids
    out = w.activate(1, seq)
    assert out["version"] == 1 and probe_matches(out["probe"], reference_logprobs(trainer, seq[:1], seq[1:]),
                                                 atol=1e-4)[0]
    after = w.generate(prompts)
    assert {s.policy_version for s in after} == {1} and [s.response_ids for s in after] != before
    w.stage_weights(perturbed_state_dict(trainer, seed=5), version=2)
    w.stage_weights(perturbed_state_dict(trainer, seed=6), version=3)
    w.activate(3)  # version 2 was never activated: dropped with it
    assert w.version == 3 and w._staged == {}
    with pytest.raises(RuntimeError, match=r"activate\(4\) without staged weights of that version"):
        w.activate(4)


class GatedRollout(RolloutWorker):
    """A rollout worker whose generate waits for ``open`` before it starts."""

    def __init__(self, *args, **kwargs):
        import threading

        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    @staticmethod
    def remote_options():
        return {"num_cpus": 1, "concurrency_groups": {**RolloutWorker.CONCURRENCY_GROUPS, "control": 1}}

    def generate(self, *args, **kwargs):
        assert self.gate.wait(timeout=120)
        return super().generate(*args, **kwargs)


def test_staging_runs_beside_generation_and_swaps_in_call_order(ray_session, policy_dir, prompts, monkeypatch):
    """A sync does not wait for queued generation: the weights arrive while generate runs, and
    the swap lands between the generate calls sent before it and those sent after."""
    ray = ray_session
    actor = ray.remote(**GatedRollout.remote_options())(GatedRollout).remote(policy_dir, CFG, name="t/rollout/0")
    ray.get(actor.ready.remote(), timeout=120)
    trainer = load_model(policy_dir)
    new = perturbed_state_dict(trainer, seed=4, scale=0.3)
    first = actor.generate.remote(prompts)  # blocked until the gate opens
    second = actor.generate.remote(prompts)
    staged = ray.get(actor.stage_weights.options(concurrency_group="staging").remote(new, 1), timeout=60)
    assert staged["checksum"] == weights_checksum(new)
    assert ray.wait([first, second], timeout=0)[1] == [first, second]  # nothing generated yet: no waiting on it
    activated = actor.activate.remote(1)
    third = actor.generate.remote(prompts)
    ray.get(actor.__ray_call__.options(concurrency_group="control").remote(lambda self: self.gate.set()))
    versions = [{s.policy_version for s in ray.get(r, timeout=120)} for r in (first, second, third)]
    assert versions == [{0}, {0}, {1}] and ray.get(activated)["version"] == 1
