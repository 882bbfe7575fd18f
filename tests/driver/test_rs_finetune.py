"""Rejection sampling's fine-tuning phase with model workers as plain objects: fewer kept rows
than trainer ranks, and a round whose fine-tuning is skipped."""
from types import SimpleNamespace

import torch

import rayrlhf.driver.rs as rs_driver
from rayrlhf.actors.batch import select_rows
from rayrlhf.actors.model_worker import ModelWorker
from rayrlhf.driver.scoring import Scored
from rayrlhf.engine.settings import EngineSettings, PolicyLoss
from rayrlhf.rollout.types import Sample
from tests.driver.test_ppo_atomic import Remote
from tests.engine.ranks import free_port, run_ranks
from tests.engine.test_engine import _close, make_batch


class Absent:
    """Another rank's actor, running in its own process: its answer is not needed here."""

    def __getattr__(self, name):
        return SimpleNamespace(remote=lambda *a, **k: {})


def _rs_driver(world_size: int, actors: list):
    d = rs_driver.RSDriver.__new__(rs_driver.RSDriver)
    d.cfg = SimpleNamespace(run=SimpleNamespace(seed=0))
    d.r = SimpleNamespace(global_batch_size=2, epochs=2)
    d.roles = SimpleNamespace(policy=SimpleNamespace(world_size=world_size, actors=actors))
    d.timeout = 60.0
    return d


def _finetune_one_row(rank, world, port, model_dir, strategy):
    rs_driver.get = lambda refs, timeout, what: refs
    w = ModelWorker("policy", model_dir, EngineSettings(lr=1e-2, strategy=strategy), PolicyLoss(objective="sft"),
                    rank=rank, world=world, seed=0)
    if world > 1:
        w.setup_group("127.0.0.1", port)
    initial = w.named_weights()
    one_row = select_rows(make_batch(model_dir), [3])  # one kept sample, two ranks
    d = _rs_driver(world, [Remote(w) if r == rank else Absent() for r in range(world)])
    stats = d._finetune(one_row, 0)
    return {"stats": stats, "weights": w.named_weights(), "initial": initial}


def test_fewer_kept_rows_than_ranks_still_fine_tune_as_one_worker_would(tiny_model_dir, tmp_path):
    """The rank without a row takes part with a zero-weighted one: the step is the one-worker step."""
    one = run_ranks(1, _finetune_one_row, 0, tiny_model_dir, "ddp", tmp_dir=str(tmp_path / "one"))[0]
    two = run_ranks(2, _finetune_one_row, free_port(), tiny_model_dir, "fsdp", tmp_dir=str(tmp_path / "two"),
                    init=False)
    assert one["stats"]["train/skipped"] == 0.0 and two[0]["stats"]["train/skipped"] == 0.0
    moved = max(float((one["weights"][k] - one["initial"][k]).abs().max()) for k in one["weights"])
    assert moved > 1e-3
    _close(two[0]["weights"], one["weights"])
    assert abs(two[0]["stats"]["train/nll"] + two[1]["stats"]["train/nll"] - 2 * one["stats"]["train/nll"]) < 1e-4


def test_a_skipped_fine_tuning_keeps_the_version_and_does_not_sync(tiny_model_dir, monkeypatch, tmp_path, capfd):
    from rayrlhf.models import load_tokenizer

    from rayrlhf.algo.hacking import HackingSection

    tok = load_tokenizer(tiny_model_dir)
    k = 2
    d = rs_driver.RSDriver.__new__(rs_driver.RSDriver)
    d.r = SimpleNamespace(k=k, top_m=1, min_reward=None, objective="sft", hacking=HackingSection())
    d.cfg, d.gold, d.timeout, d.run_dir, d.tokenizer, d.version = SimpleNamespace(combine=None), {}, 60.0, \
        str(tmp_path), tok, 0
    d.prompts = [SimpleNamespace(prompt=[{"role": "user", "content": "Where is Anna?"}], meta={})]
    d.prompt_ids, d.roles = [[1, 2, 3]], None
    d.order = SimpleNamespace(rows=lambda rnd: [0])
    samples = [Sample(0, j, [1, 2, 3], [4, 5, 6][: 2 + j], [-1.0] * (2 + j), "x", "stop", 0) for j in range(k)]
    d.fleet = SimpleNamespace(submit=lambda rnd, rows, ids, n: SimpleNamespace(prompt_rows=rows),
                              collect=lambda job: (samples, {}))
    monkeypatch.setattr(rs_driver, "score_samples", lambda *a: Scored(torch.tensor([0.5, 1.0]),
                                                                      {"rule": torch.tensor([0.5, 1.0])}, {}))
    syncs = []
    d._sync = lambda: syncs.append(d.version) or {}
    d._finetune = lambda batch, rnd, group: {"train/skipped": 1.0, "train/skipped_at": 2.0, "train/loss": float("nan")}
    out = d.round(0)
    assert d.version == 0 and syncs == [] and out["train/skipped"] == 1.0 and out["policy/version"] == 0.0
    assert "round 1: skipped the fine-tuning: non-finite loss or gradient norm in mini-batch 2" in capfd.readouterr().out
    d._finetune = lambda batch, rnd, group: {"train/skipped": 0.0, "train/loss": 1.0}
    out = d.round(1)
    assert d.version == 1 and syncs == [1] and out["train/skipped"] == 0.0
    # No sample kept: nothing to fine-tune on, said and counted the same way.
    d.r.min_reward = 5.0
    out = d.round(2)
    assert d.version == 1 and syncs == [1] and out["train/skipped"] == 1.0
    assert "round 3: skipped the fine-tuning: no sample was kept" in capfd.readouterr().out
