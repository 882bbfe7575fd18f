"""The transformers backend: sampling semantics, behaviour logprobs, seeds, weight reloads."""
import dataclasses

import pytest

from rayrlhf.rollout import RolloutSection, probe_matches, weights_checksum
from rayrlhf.rollout.hf_backend import HFBackend
from tests.rollout.conftest import (greedy, load_model, reference_logprobs,
                                    weights_that_change_greedy)

CFG = RolloutSection(backend="hf", temperature=0.8, max_new_tokens=12, max_model_len=64, seed=1)


@pytest.fixture(scope="module")
def backend(policy_dir):
    return HFBackend(policy_dir, cfg=CFG)


@pytest.fixture(scope="module")
def model(policy_dir):
    return load_model(policy_dir)


def test_samples_come_in_prompt_then_sample_order(backend, prompts):
    samples = backend.generate(prompts, n=3, seed=5)
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(i, j) for i in range(4) for j in range(3)]
    assert all(s.prompt_ids == prompts[s.prompt_index] for s in samples)
    assert all(len(s.logprobs) == len(s.response_ids) > 0 for s in samples)
    assert all(s.policy_version == 0 for s in samples)


def test_same_seed_same_samples_other_seed_other_samples(backend, prompts):
    ids = lambda out: [s.response_ids for s in out]  # noqa: E731
    a = backend.generate(prompts, n=2, seed=11)
    assert ids(a) == ids(backend.generate(prompts, n=2, seed=11))
    assert ids(a) != ids(backend.generate(prompts, n=2, seed=12))


def test_unseeded_calls_differ_but_repeat_from_the_base_seed(policy_dir, backend, prompts):
    cfg = dataclasses.replace(CFG, temperature=2.0)
    first, second = HFBackend(policy_dir, cfg=cfg), HFBackend(policy_dir, cfg=cfg)
    a1, a2 = first.generate(prompts), first.generate(prompts)
    b1, b2 = second.generate(prompts), second.generate(prompts)
    assert [s.response_ids for s in a1] != [s.response_ids for s in a2]
    assert [s.response_ids for s in a1 + a2] == [s.response_ids for s in b1 + b2]


def test_identical_prompts_get_independent_samples(backend, prompts, monkeypatch):
    monkeypatch.setattr(backend, "cfg", dataclasses.replace(CFG, temperature=2.0))
    out = backend.generate([prompts[0]] * 4, n=1, seed=3)
    assert len({tuple(s.response_ids) for s in out}) > 1


def test_behaviour_logprobs_are_log_softmax_of_logits_over_temperature(backend, model, prompts):
    got, raw = [], []
    for s in backend.generate(prompts, n=2, seed=21):
        ref = reference_logprobs(model, s.prompt_ids, s.response_ids, temperature=CFG.temperature)
        ok, diff = probe_matches(s.logprobs, ref, atol=1e-4)
        assert ok, (s, diff)
        got += s.logprobs
        raw += reference_logprobs(model, s.prompt_ids, s.response_ids)
    # and not the untempered ones
    assert not probe_matches(got, raw, atol=1e-2)[0]


def test_top_k_logprobs_are_those_of_the_truncated_distribution(backend, model, prompts, monkeypatch):
    monkeypatch.setattr(backend, "cfg", dataclasses.replace(CFG, temperature=1.5, top_k=3))
    for s in backend.generate(prompts, n=2, seed=4):
        ref = reference_logprobs(model, s.prompt_ids, s.response_ids, temperature=1.5, top_k=3)
        assert probe_matches(s.logprobs, ref, atol=1e-4)[0], s


def test_greedy_follows_the_argmax_and_stops_at_eos(backend, model, prompts, tokenizer, monkeypatch):
    monkeypatch.setattr(backend, "cfg", dataclasses.replace(CFG, temperature=0.0, max_new_tokens=20))
    out = backend.generate(prompts, n=2)
    for s in out:
        assert s.response_ids == greedy(model, s.prompt_ids, 20, tokenizer.eos_token_id)
    first = out[0]
    assert first.finish_reason == "stop" and first.response_ids[-1] == tokenizer.eos_token_id
    assert first.text == " sat on the mat."
    assert first.logprobs == pytest.approx(reference_logprobs(model, first.prompt_ids, first.response_ids), abs=1e-4)


def test_finish_reason_length(backend, prompts, monkeypatch):
    monkeypatch.setattr(backend, "cfg", dataclasses.replace(CFG, temperature=0.0, max_new_tokens=3))
    out = backend.generate(prompts)
    assert all(s.finish_reason == "length" and len(s.response_ids) == 3 for s in out)


def test_prompt_longer_than_the_model_allows_is_refused(backend):
    with pytest.raises(ValueError, match="max_model_len"):
        backend.generate([[1] * 60])


def test_probe_logprobs_equal_a_plain_forward(backend, model, prompts):
    seq = prompts[3] + [5, 6, 7]
    ref = reference_logprobs(model, seq[:1], seq[1:])
    assert probe_matches(backend.probe_logprobs(seq), ref, atol=1e-5)[0]


def test_reload_changes_outputs_to_the_new_weights(policy_dir, prompts, tokenizer):
    backend = HFBackend(policy_dir, cfg=dataclasses.replace(CFG, temperature=0.0, max_new_tokens=20))
    before = backend.generate(prompts)
    trainer, new = weights_that_change_greedy(policy_dir, before, tokenizer.eos_token_id)
    report = backend.load_weights(new, version=3)
    assert report["version"] == 3 and report["checksum"] == weights_checksum(trainer.state_dict())
    assert report["bytes"] == sum(t.numel() * 4 for t in new.values()) and report["seconds"] >= 0
    after = backend.generate(prompts)
    assert [s.response_ids for s in after] != [s.response_ids for s in before]
    for s in after:
        assert s.policy_version == 3
        assert s.response_ids == greedy(trainer, s.prompt_ids, 20, tokenizer.eos_token_id)
    seq = prompts[1] + after[1].response_ids
    assert probe_matches(backend.probe_logprobs(seq), reference_logprobs(trainer, seq[:1], seq[1:]), 1e-5)[0]


def test_tied_model_reload_with_or_without_lm_head(tied_dir, tokenizer, prompts):
    from rayrlhf.models import build_tiny_llama
    from tests.rollout.conftest import SPEC

    backend = HFBackend(tied_dir, cfg=CFG)
    seq = prompts[3] + [5, 6, 7]
    spec = dataclasses.replace(SPEC, tie_word_embeddings=True)
    for seed, keep_head in [(1, True), (2, False)]:
        trainer = build_tiny_llama(tokenizer, spec, seed=seed)
        sd = {k: v for k, v in trainer.state_dict().items() if keep_head or k != "lm_head.weight"}
        backend.load_weights(sd, version=seed)
        ref = reference_logprobs(trainer.eval(), seq[:1], seq[1:])
        assert probe_matches(backend.probe_logprobs(seq), ref, atol=1e-5)[0]
    # A corrupted tensor (one weight 1% off) passes strict loading but not the probe.
    bad = {k: v.clone() for k, v in trainer.state_dict().items()}
    bad["model.layers.0.self_attn.v_proj.weight"] *= 1.01
    backend.load_weights(bad, version=3)
    ok, diff = probe_matches(backend.probe_logprobs(seq), ref, atol=1e-4)
    assert not ok, diff
