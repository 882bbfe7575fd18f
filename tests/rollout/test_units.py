"""Config validation, checksums, the probe comparison and seed / tied-weight helpers."""
import dataclasses
import math

import pytest
import torch

from rayrlhf.rollout import RolloutSection, probe_matches, weights_checksum
from rayrlhf.rollout.common import SeedCounter, check_prompts, complete_tied_weights, derive_seed


def test_default_config_is_valid():
    assert RolloutSection().validate() == []


@pytest.mark.parametrize("field,value,needle", [
    ("backend", "tgi", "backend"),
    ("temperature", -0.1, "temperature"),
    ("top_p", 0.0, "top_p"),
    ("top_p", 1.5, "top_p"),
    ("top_k", 0, "top_k"),
    ("max_new_tokens", 0, "max_new_tokens"),
    ("n_samples", 0, "n_samples"),
    ("dtype", "float64", "dtype"),
    ("max_model_len", 64, "max_model_len"),
    ("gpu_memory_utilization", 0.0, "gpu_memory_utilization"),
    ("cpu_kv_cache_gib", 0.0, "cpu_kv_cache_gib"),
    ("seed", -1, "seed"),
])
def test_config_rejects(field, value, needle):
    problems = dataclasses.replace(RolloutSection(), **{field: value}).validate()
    assert len(problems) == 1 and problems[0].startswith(needle), problems


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"b.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(3, generator=g),
            "scale": torch.tensor(2.0), "half": torch.randn(2, 2, generator=g).to(torch.bfloat16)}


def test_checksum_is_deterministic_and_order_free():
    t = _tensors()
    assert weights_checksum(t) == weights_checksum(dict(reversed(list(t.items()))))
    assert weights_checksum(t) == weights_checksum({k: v.clone() for k, v in t.items()})


def test_checksum_sees_every_kind_of_change():
    t = _tensors()
    base = weights_checksum(t)
    flipped = t["half"].clone()
    flipped.view(torch.int16)[0, 0] ^= 1  # lowest mantissa bit of one bf16 value
    changes = [
        {**t, "half": flipped},
        {**t, "scale": torch.tensor(2.0 + 1e-6)},
        {**t, "b.weight": t["b.weight"].reshape(3, 4)},  # same bytes, other shape
        {**t, "a.bias": t["a.bias"].double()},
        {**{k: v for k, v in t.items() if k != "a.bias"}, "c.bias": t["a.bias"]},  # renamed
        {k: v for k, v in t.items() if k != "scale"},
    ]
    sums = [weights_checksum(c) for c in changes]
    assert base not in sums and len(set(sums)) == len(sums)


def test_checksum_of_non_contiguous_tensor_equals_its_contiguous_copy():
    x = torch.randn(5, 7)
    assert weights_checksum({"x": x.t()}) == weights_checksum({"x": x.t().contiguous()})


def test_probe_matches():
    assert probe_matches([-1.0, -2.0], [-1.0, -2.00005], atol=1e-4) == (True, pytest.approx(5e-5, rel=1e-3))
    ok, diff = probe_matches([-1.0, -2.0], [-1.0, -2.01], atol=1e-4)
    assert not ok and diff == pytest.approx(0.01, rel=1e-3)
    assert probe_matches([-1.0], [-1.0, -2.0], atol=1.0) == (False, math.inf)
    assert probe_matches([float("nan")], [-1.0], atol=1.0) == (False, math.inf)


def test_seeds_differ_per_prompt_and_per_call():
    seeds = {derive_seed(s, i) for s in range(20) for i in range(20)}
    assert len(seeds) == 400
    # Additive seeding would collide here: (call 0, prompt 1) vs (call 1, prompt 0).
    assert derive_seed(0, 1) != derive_seed(1, 0)
    a, b = SeedCounter(7), SeedCounter(7)
    drawn = [a.next(None) for _ in range(3)]
    assert drawn == [b.next(None) for _ in range(3)] and len(set(drawn)) == 3
    assert a.next(123) == 123


def test_check_prompts():
    check_prompts([[1, 2, 3]], max_new_tokens=5, max_model_len=8)
    with pytest.raises(ValueError, match="max_model_len"):
        check_prompts([[1, 2, 3, 4]], max_new_tokens=5, max_model_len=8)
    with pytest.raises(ValueError, match="empty"):
        check_prompts([[1], []], max_new_tokens=5, max_model_len=8)


def test_complete_tied_weights():
    emb = torch.randn(10, 4)
    sd = {"model.embed_tokens.weight": emb, "model.norm.weight": torch.ones(4)}
    assert complete_tied_weights(sd, tied=False) is sd
    full = complete_tied_weights(sd, tied=True)
    assert full["lm_head.weight"] is emb and "lm_head.weight" not in sd
    assert complete_tied_weights({**sd, "lm_head.weight": emb.clone()}, tied=True)["lm_head.weight"] is not emb
    with pytest.raises(ValueError, match="untied"):
        complete_tied_weights({**sd, "lm_head.weight": emb + 1}, tied=True)
    with pytest.raises(ValueError, match="absent"):
        complete_tied_weights({"model.norm.weight": torch.ones(4)}, tied=True)
