"""The vLLM backend against the transformers backend and against plain forward passes.

One engine per model for the whole module: an in-process engine starts in a few seconds, and
its first logprobs request costs a few more.
"""
import dataclasses
import logging

import pytest
import torch

from rayrlhf.rollout import RolloutSection, probe_matches, weights_checksum
from tests.rollout.conftest import (SPEC, greedy, load_model, perturbed_state_dict, reference_logprobs,
                                    requires_vllm, weights_that_change_greedy)

pytestmark = requires_vllm

CFG = RolloutSection(backend="vllm", temperature=0.8, max_new_tokens=12, max_model_len=64, seed=1,
                     cpu_kv_cache_gib=0.25)


HOST = {}  # the hosting process's state around the engine's start


@pytest.fixture(scope="module")
def engine(policy_dir):
    from rayrlhf.rollout.vllm_backend import VLLMBackend

    torch.manual_seed(1234)
    HOST["rng_before"], HOST["set_num_threads"] = torch.random.get_rng_state(), torch.set_num_threads
    backend = VLLMBackend(policy_dir, cfg=CFG)
    HOST["rng_after"] = torch.random.get_rng_state()
    return backend


def test_engine_leaves_the_host_process_alone(engine):
    assert torch.equal(HOST["rng_before"], HOST["rng_after"])
    assert torch.set_num_threads is HOST["set_num_threads"]


@pytest.fixture(scope="module")
def hf(policy_dir):
    from rayrlhf.rollout.hf_backend import HFBackend

    return HFBackend(policy_dir, cfg=CFG)


@pytest.fixture(scope="module")
def model(policy_dir):
    return load_model(policy_dir)


def _with(backend, monkeypatch, **changes):
    monkeypatch.setattr(backend, "cfg", dataclasses.replace(backend.cfg, **changes))


def test_greedy_matches_hf(engine, hf, prompts, monkeypatch):
    for b in (engine, hf):
        _with(b, monkeypatch, temperature=0.0, max_new_tokens=20)
    ours, theirs = engine.generate(prompts, n=2), hf.generate(prompts, n=2)
    assert [s.response_ids for s in ours] == [s.response_ids for s in theirs]
    assert [s.finish_reason for s in ours] == [s.finish_reason for s in theirs]
    assert [s.text for s in ours] == [s.text for s in theirs]
    assert "stop" in {s.finish_reason for s in ours}
    for s, t in zip(ours, theirs):
        assert probe_matches(s.logprobs, t.logprobs, atol=1e-4)[0]


def test_samples_come_in_prompt_then_sample_order(engine, prompts):
    samples = engine.generate(prompts, n=3, seed=5)
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(i, j) for i in range(4) for j in range(3)]
    assert all(s.prompt_ids == prompts[s.prompt_index] for s in samples)
    assert all(len(s.logprobs) == len(s.response_ids) > 0 for s in samples)


def test_behaviour_logprobs_are_log_softmax_of_logits_over_temperature(engine, model, prompts):
    got, raw = [], []
    for s in engine.generate(prompts, n=2, seed=21):
        ref = reference_logprobs(model, s.prompt_ids, s.response_ids, temperature=CFG.temperature)
        ok, diff = probe_matches(s.logprobs, ref, atol=1e-4)
        assert ok, (s, diff)
        got += s.logprobs
        raw += reference_logprobs(model, s.prompt_ids, s.response_ids)
    assert not probe_matches(got, raw, atol=1e-2)[0]  # vLLM's default (raw) mode would pass this


def test_top_k_logprobs_are_those_of_the_truncated_distribution(engine, model, prompts, monkeypatch):
    _with(engine, monkeypatch, temperature=1.5, top_k=3)
    for s in engine.generate(prompts, n=2, seed=4):
        ref = reference_logprobs(model, s.prompt_ids, s.response_ids, temperature=1.5, top_k=3)
        assert probe_matches(s.logprobs, ref, atol=1e-4)[0], s


def test_seeds(engine, prompts, monkeypatch):
    _with(engine, monkeypatch, temperature=2.0)
    ids = lambda out: [s.response_ids for s in out]  # noqa: E731
    a = engine.generate(prompts, n=2, seed=11)
    assert ids(a) == ids(engine.generate(prompts, n=2, seed=11))
    assert ids(a) != ids(engine.generate(prompts, n=2, seed=12))
    assert ids(engine.generate(prompts)) != ids(engine.generate(prompts))  # unseeded calls differ
    # vLLM would give every request with the same seed the same noise.
    same = engine.generate([prompts[0]] * 4, n=1, seed=3)
    assert len({tuple(s.response_ids) for s in same}) > 1


def test_finish_reason_length(engine, prompts, monkeypatch):
    _with(engine, monkeypatch, temperature=0.0, max_new_tokens=3)
    assert all(s.finish_reason == "length" and len(s.response_ids) == 3 for s in engine.generate(prompts))


def test_probe_logprobs_equal_a_plain_forward(engine, model, prompts):
    seq = prompts[3] + [5, 6, 7]
    assert probe_matches(engine.probe_logprobs(seq), reference_logprobs(model, seq[:1], seq[1:]), 1e-4)[0]


def test_choice_logprobs_equal_a_plain_forward_and_the_hf_backend(engine, hf, model, prompts):
    """The judge's label tokens (rayrlhf label): next-token logprobs of given candidates,
    prompts of different lengths in one call."""
    choices = [[5, 6], [7, 8], [5, 9], [10, 6]]
    ours, theirs = engine.choice_logprobs(prompts, choices), hf.choice_logprobs(prompts, choices)
    for p, cs, row, hf_row in zip(prompts, choices, ours, theirs):
        expected = [float(reference_logprobs(model, p, [c])[0]) for c in cs]
        assert row == pytest.approx(expected, abs=1e-4) and hf_row == pytest.approx(expected, abs=1e-4)


def test_reload_changes_outputs_to_the_new_weights(engine, policy_dir, prompts, tokenizer, monkeypatch):
    _with(engine, monkeypatch, temperature=0.0, max_new_tokens=20)
    original = {k: v.clone() for k, v in load_model(policy_dir).state_dict().items()}
    before = engine.generate(prompts)
    trainer, _ = weights_that_change_greedy(policy_dir, before, tokenizer.eos_token_id)
    report = engine.load_weights(trainer.state_dict(), version=4)
    try:
        assert report["version"] == 4 and report["checksum"] == weights_checksum(trainer.state_dict())
        after = engine.generate(prompts)
        assert [s.response_ids for s in after] != [s.response_ids for s in before]
        for s in after:
            assert s.policy_version == 4
            assert s.response_ids == greedy(trainer, s.prompt_ids, 20, tokenizer.eos_token_id)
        seq = prompts[1] + after[1].response_ids
        assert probe_matches(engine.probe_logprobs(seq), reference_logprobs(trainer, seq[:1], seq[1:]), 1e-4)[0]
    finally:
        engine.load_weights(original, version=0)
    assert [s.response_ids for s in engine.generate(prompts)] == [s.response_ids for s in before]


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_sync_warns_only_about_layers_left_without_weights(engine, policy_dir, prompts):
    """vLLM's reload counts the rotary embedding's cos/sin cache (a buffer it derives from the
    config, in no checkpoint) as a weight and warned at every sync that the layer got none; a
    layer with parameters that gets no weights still warns."""
    from rayrlhf.rollout.vllm_reload import RELOAD_LOGGER

    trainer = load_model(policy_dir)
    original = {k: v.clone() for k, v in trainer.state_dict().items()}
    trainer.load_state_dict(perturbed_state_dict(trainer, seed=7))
    sent = trainer.state_dict()
    assert not any("rotary" in k for k in sent)  # the trainer sends no rotary tensor
    seq = prompts[3] + [5, 6, 7]
    records = Records()
    logger = logging.getLogger(RELOAD_LOGGER)
    logger.addHandler(records)
    try:
        report = engine.load_weights(sent, version=5)
        assert records.messages == []
        assert report["checksum"] == weights_checksum(sent)
        ok, diff = probe_matches(engine.probe_logprobs(seq), reference_logprobs(trainer, seq[:1], seq[1:]), 1e-4)
        assert ok, diff
        engine.load_weights({k: v for k, v in sent.items() if k != "model.norm.weight"}, version=6)
        assert records.messages == ["RMSNorm: Failed to load weights"]
    finally:
        logger.removeHandler(records)
        engine.load_weights(original, version=0)


@pytest.fixture(scope="module")
def tied_engine(tied_dir):
    from rayrlhf.rollout.vllm_backend import VLLMBackend

    return VLLMBackend(tied_dir, cfg=CFG)


def test_tied_lm_head_is_refreshed_with_or_without_the_key(tied_engine, tokenizer, prompts):
    from rayrlhf.models import build_tiny_llama

    spec = dataclasses.replace(SPEC, tie_word_embeddings=True)
    seq = prompts[3] + [5, 6, 7]
    # Load A with lm_head, then B without: B's lm_head must not stay A's.
    for seed, keep_head in [(1, True), (2, False)]:
        trainer = build_tiny_llama(tokenizer, spec, seed=seed).eval()
        sd = {k: v for k, v in trainer.state_dict().items() if keep_head or k != "lm_head.weight"}
        report = tied_engine.load_weights(sd, version=seed)
        assert report["checksum"] == weights_checksum(sd)
        ok, diff = probe_matches(tied_engine.probe_logprobs(seq), reference_logprobs(trainer, seq[:1], seq[1:]), 1e-4)
        assert ok, (seed, diff)


def test_probe_catches_what_the_checksum_cannot(tied_engine, tokenizer, prompts):
    """A reload that bypasses the tied-head completion, and a corrupted tensor: both load
    without error, and only the probe shows the engine now computes something else."""
    from rayrlhf.models import build_tiny_llama

    spec = dataclasses.replace(SPEC, tie_word_embeddings=True)
    seq = prompts[3] + [5, 6, 7]
    a, b = (build_tiny_llama(tokenizer, spec, seed=s).eval() for s in (3, 4))
    tied_engine.load_weights(a.state_dict(), version=1)
    without_head = [(k, v) for k, v in b.state_dict().items() if k != "lm_head.weight"]
    tied_engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": without_head})
    tied_engine.llm.reset_prefix_cache()
    ok, diff = probe_matches(tied_engine.probe_logprobs(seq), reference_logprobs(b, seq[:1], seq[1:]), 1e-4)
    assert not ok, diff

    bad = {k: v.clone() for k, v in b.state_dict().items()}
    bad["model.layers.0.self_attn.v_proj.weight"] *= 1.01
    tied_engine.load_weights(bad, version=2)
    ok, diff = probe_matches(tied_engine.probe_logprobs(seq), reference_logprobs(b, seq[:1], seq[1:]), 1e-4)
    assert not ok, diff
    tied_engine.load_weights(b.state_dict(), version=3)
    assert probe_matches(tied_engine.probe_logprobs(seq), reference_logprobs(b, seq[:1], seq[1:]), 1e-4)[0]


def test_a_call_larger_than_one_default_prefill_step_works_with_seeds(engine, prompts):
    """More prompt tokens than vLLM's default step (2048) would be chunked, which vLLM's CPU
    build cannot do for seeded requests; the backend sizes the step to avoid it."""
    many = [p for _ in range(200) for p in prompts][:200]
    assert sum(len(p) for p in many) * 2 > 2048
    samples = engine.generate(many, n=2, seed=5)
    assert len(samples) == 400
    again = engine.generate(many, n=2, seed=5)
    assert [s.response_ids for s in samples] == [s.response_ids for s in again]
