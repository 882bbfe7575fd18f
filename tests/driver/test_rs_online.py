"""Online DPO and RRHF in rejection sampling's rounds (``rs.objective``), with model workers as
plain objects: the losses against hand-computed values, what a round selects, the split over
micro-batches and ranks, and the roles a run starts."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import rayrlhf.driver.rs as rs_driver
from rayrlhf.actors.batch import as_lists, select_rows
from rayrlhf.actors.model_worker import ModelWorker
from rayrlhf.algo.logprobs import token_logprobs
from rayrlhf.algo.losses import ranked_list_pairs
from rayrlhf.config import load_config
from rayrlhf.config.loader import ConfigError
from rayrlhf.config.rs import RSConfig
from rayrlhf.config.schema import DPOSection, RRHFSection
from rayrlhf.driver.scoring import Scored
from rayrlhf.engine.memory import planned_roles
from rayrlhf.engine.settings import EngineSettings, PolicyLoss
from tests.driver.test_rs_finetune import Absent, _rs_driver
from tests.driver.test_ppo_atomic import Remote
from tests.engine.ranks import free_port, run_ranks
from tests.engine.test_engine import _close, make_batch


def test_ranked_list_pairs_by_hand():
    # scores 1, 3, 3, 0: pairs (b, w) = (1, 0), (2, 0), (0, 3), (1, 3), (2, 3); 1 and 2 tie (no
    # pair); the best is 1 (the lower index of the tie). The second list is left out.
    better, worse, best = ranked_list_pairs(torch.tensor([[1.0, 3.0, 3.0, 0.0], [0.0, 1.0, 2.0, 3.0]]),
                                            torch.tensor([True, False]))
    assert sorted(zip(better.tolist(), worse.tolist())) == [(0, 3), (1, 0), (1, 3), (2, 0), (2, 3)]
    assert best.tolist() == [1]
    better, worse, best = ranked_list_pairs(torch.tensor([[0.0, 5.0], [2.0, 1.0]]))
    assert sorted(zip(better.tolist(), worse.tolist())) == [(1, 0), (2, 3)] and best.tolist() == [1, 2]


def _seq_logps(model, batch) -> torch.Tensor:
    with torch.no_grad():
        lp = token_logprobs(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(),
                            batch["input_ids"])
    return (lp * batch["response_mask"]).sum(-1), lp


def test_online_dpo_loss_is_dpo_on_each_pair_and_padding_adds_nothing(tiny_model_dir):
    beta = 0.5
    w = ModelWorker("policy", tiny_model_dir, EngineSettings(),
                    PolicyLoss(objective="dpo", dpo=DPOSection(beta=beta)))
    flat = select_rows(make_batch(tiny_model_dir), list(range(6)))  # 3 pairs: rows (0, 1), (2, 3), (4, 5)
    flat["ref_logps"] = torch.tensor([-9.0, -8.0, -7.5, -9.5, -8.0, -8.0])
    seq, _ = _seq_logps(w.model, flat)
    u = (seq[0::2] - flat["ref_logps"][0::2]) - (seq[1::2] - flat["ref_logps"][1::2])
    want = float(-F.logsigmoid(beta * u).mean())
    mb = as_lists(flat, 2)
    loss, stats = w._loss(w.model, mb, 3.0)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    assert stats["rewards/margins"] == pytest.approx(float((beta * u).mean()), rel=1e-5)
    assert stats["rewards/accuracies"] == pytest.approx(float((u > 0).float().mean()))
    # The first pair alone, as 1 of the global 3, and a padding pair: a third of pair 1's loss.
    one = as_lists(select_rows(flat, [0, 1, 0, 1]), 2)
    one["response_mask"][1] = 0.0
    loss1, _ = w._loss(w.model, one, 3.0)
    assert float(loss1.detach()) == pytest.approx(float(-F.logsigmoid(beta * u[0])) / 3, rel=1e-5)


def test_online_rrhf_loss_ranks_by_the_rewards(tiny_model_dir):
    w = ModelWorker("policy", tiny_model_dir, EngineSettings(),
                    PolicyLoss(objective="rrhf", rrhf=RRHFSection(rank_weight=1.0, sft_weight=0.5, length_penalty=1.0)))
    flat = select_rows(make_batch(tiny_model_dir), list(range(6)))  # 2 lists of 3
    flat["scores"] = torch.tensor([0.2, 0.9, -1.0, 0.0, 0.0, 0.4])
    summed, _ = _seq_logps(w.model, flat)
    p = summed / flat["response_mask"].sum(-1)  # length-normalised
    # List 1 ranks 1 > 0 > 2; list 2 ranks 5 > 3 = 4 (3 and 4 tie: no pair). Bests 1 and 5.
    pairs = [(1, 0), (1, 2), (0, 2), (5, 3), (5, 4)]
    rank = sum(float(torch.relu(p[w_] - p[b])) for b, w_ in pairs)
    sft = float(-(p[1] + p[5]))  # token-mean NLL of each best (length_penalty 1: p is the mean)
    want = (rank + 0.5 * sft) / 2
    loss, stats = w._loss(w.model, as_lists(flat, 3), 2.0)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    assert stats["rank_loss"] == pytest.approx(rank / 2, rel=1e-5)


def _scored(values) -> Scored:
    v = torch.tensor(values)
    return Scored(v, {"rule": v}, {"reward": [float(x) for x in values]})


@pytest.mark.parametrize("objective", ["dpo", "rrhf"])
def test_a_round_selects_pairs_or_lists(objective):
    d = rs_driver.RSDriver.__new__(rs_driver.RSDriver)
    d.r = SimpleNamespace(objective=objective, top_m=1, min_reward=None)
    # Three prompts of K = 3: a clear best and worst, all tied, best last.
    scored = _scored([0.5, 2.0, -1.0, 1.0, 1.0, 1.0, 0.0, 0.1, 3.0])
    lists, out = d.select(scored, 3)
    if objective == "dpo":
        assert lists == [[1, 2], [8, 6]]
        assert out["rs/tied_prompts"] == 1.0 and out["rs/kept"] == 2.0
        assert out["rs/pair_reward_gap"] == pytest.approx(((2.0 + 1.0) + (3.0 - 0.0)) / 2)
        assert out["rs/kept_reward"] == pytest.approx(2.5)
    else:
        assert lists == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and out["rs/kept"] == 3.0
        assert out["rs/kept_reward"] == pytest.approx((2.0 + 1.0 + 3.0) / 3)  # the bests: 1, 3 (tie: lower), 8
    d.r.min_reward = 2.5  # only the third prompt's best reaches it
    lists, out = d.select(scored, 3)
    assert out["rs/rejected_prompts"] == 2.0 and lists == ([[8, 6]] if objective == "dpo" else [[6, 7, 8]])


def _online_dpo_step(rank, world, port, model_dir, strategy):
    rs_driver.get = lambda refs, timeout, what: refs
    w = ModelWorker("policy", model_dir, EngineSettings(lr=1e-2, strategy=strategy, micro_batch_size=1),
                    PolicyLoss(objective="dpo", dpo=DPOSection(beta=0.5)), rank=rank, world=world, seed=0)
    if world > 1:
        w.setup_group("127.0.0.1", port)
    flat = select_rows(make_batch(model_dir), list(range(6)))
    flat["ref_logps"] = torch.tensor([-9.0, -8.0, -7.5, -9.5, -8.0, -8.0])
    d = _rs_driver(world, [Remote(w) if r == rank else Absent() for r in range(world)])
    d.r.global_batch_size = 3
    stats = d._finetune(flat, 0, 2)
    return {"stats": stats, "weights": w.named_weights()}


def test_online_dpo_over_two_fsdp_ranks_steps_as_one_worker(tiny_model_dir, tmp_path):
    """3 pairs per step over 2 ranks (2 + 1) and micro-batches of 1 pair: the one-worker step."""
    one = run_ranks(1, _online_dpo_step, 0, tiny_model_dir, "ddp", tmp_dir=str(tmp_path / "one"))[0]
    two = run_ranks(2, _online_dpo_step, free_port(), tiny_model_dir, "fsdp", tmp_dir=str(tmp_path / "two"),
                    init=False)
    assert one["stats"]["train/skipped"] == 0.0 and two[0]["stats"]["train/skipped"] == 0.0
    _close(two[0]["weights"], one["weights"])
    for key in ("train/loss", "train/rewards/margins"):
        assert (two[0]["stats"][key] + two[1]["stats"][key]) / 2 == pytest.approx(one["stats"][key], rel=1e-4)


def _cfg(**extra):
    data = {"policy": {"name_or_path": "/models/sft"}, "data": {"train": ["p.jsonl"]},
            "rewards": [{"name": "rule", "function": "tests.driver.faults:reward"}], **extra}
    return load_config(RSConfig, data=data)


def test_online_dpo_starts_a_reference_and_the_plan_shows_it():
    assert "reference" not in planned_roles("rs", _cfg())
    assert "reference" in planned_roles("rs", _cfg(rs={"objective": "dpo"}))
    assert "reference" not in planned_roles("rs", _cfg(rs={"objective": "rrhf"}))
    # LoRA on the policy's own model: its base is the reference, no worker for it.
    lora = _cfg(rs={"objective": "dpo"}, policy={"name_or_path": "/models/sft", "lora": {"r": 4}})
    assert lora.reference_from_policy and "reference" not in planned_roles("rs", lora)


def test_online_objectives_refuse_settings_they_cannot_use():
    with pytest.raises(ConfigError) as e:
        _cfg(rs={"objective": "dpo", "k": 1})
    assert "k must be at least 2" in str(e.value)
    with pytest.raises(ConfigError) as e:
        _cfg(rs={"objective": "rrhf", "top_m": 2})
    assert "top_m: 2 applies to objective sft only" in str(e.value)
    with pytest.raises(ConfigError) as e:
        _cfg(rs={"objective": "dpo"}, dpo={"margin": "label"})
    assert "dpo.margin" in str(e.value) and "carry no margin" in str(e.value)
