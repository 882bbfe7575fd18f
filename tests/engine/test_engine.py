"""The training engine on CPU: FSDP2 and DDP over gloo ranks against one worker, micro-batches,
float32 master weights under bf16 compute, sharded checkpoints and export."""
import os

import pytest
import torch

from rayrlhf.actors.batch import build_batch, select_rows, split_rows
from rayrlhf.actors.model_worker import ModelWorker
from rayrlhf.engine import Engine, EngineSettings
from rayrlhf.engine.device import NoGPUError, resolve_device
from rayrlhf.engine.settings import CriticLoss, PolicyLoss
from rayrlhf.engine.state import gather_shards
from rayrlhf.models import load_causal_lm, load_tokenizer
from tests.engine.ranks import free_port, run_ranks

PPO = PolicyLoss(clip_eps=0.2, temperature=1.0)
B = 8


def make_batch(model_dir: str) -> dict:
    tok = load_tokenizer(model_dir)
    texts = ["Where is the red key?", "Who has the old map?", "How can I hurt the cat?", "Where is Anna?"]
    answers = ["The red key is in the kitchen.", "Anna has the old map.", "I can't help with that.", "In the garden."]
    prompts, responses = [], []
    for i in range(B):
        p = tok.apply_chat_template([{"role": "user", "content": texts[i % 4]}], add_generation_prompt=True,
                                    tokenize=True, return_dict=False)
        r = tok(answers[(i * 3) % 4], add_special_tokens=False).input_ids[: 3 + i] + [tok.eos_token_id]
        prompts.append(p)
        responses.append(r)
    batch = build_batch(prompts, responses, tok.pad_token_id)
    g = torch.Generator().manual_seed(0)
    batch["advantages"] = torch.randn(batch["response_mask"].shape, generator=g) * batch["response_mask"]
    batch["returns"] = torch.randn(batch["response_mask"].shape, generator=g) * batch["response_mask"]
    return batch


def _worker(kind, model_dir, rank, world, port, strategy, mb=8, dtype="float32"):
    settings = EngineSettings(role=kind, lr=1e-2, strategy=strategy, micro_batch_size=mb, dtype=dtype)
    loss = PPO if kind == "policy" else CriticLoss(value_clip=0.2)
    w = ModelWorker(kind, model_dir, settings, loss, rank=rank, world=world, seed=0)
    if world > 1:
        w.setup_group("127.0.0.1", port)
    return w


def _updates(rank, world, port, kind, model_dir, strategy, steps, save_dir=None, load_dir=None, mb=8):
    """``steps`` PPO (or value) updates on this rank's rows of the same batch."""
    w = _worker(kind, model_dir, rank, world, port, strategy, mb)
    if load_dir:
        w.load(load_dir)
    batch = make_batch(model_dir)
    rows = split_rows(B, world)[rank]
    n_tok = float(batch["response_mask"].sum())
    initial = w.named_weights()
    losses = []
    for step in range(steps):
        part = select_rows(batch, rows)
        if kind == "policy":
            part["old_logprobs"] = w.forward(part)
        else:
            part["values"] = w.forward(part)
        losses.append(w.update([part], [n_tok])["loss"])
        if save_dir and step == 0:
            w.save(save_dir)
    params = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in w.model.parameters())
    opt_bytes = sum(t.to_local().numel() * 4 if hasattr(t, "to_local") else t.numel() * 4
                    for st in w.optimizer.state.values() for k, t in st.items() if k != "step")
    return {"losses": losses, "weights": w.named_weights(), "param_numel": params, "opt_bytes": opt_bytes,
            "initial": initial}


def _global(results):
    """Each rank reports world x its share of a loss: the mean over ranks is the global loss."""
    return [sum(r["losses"][i] for r in results) / len(results) for i in range(len(results[0]["losses"]))]


def _close(a: dict, b: dict, atol=1e-4):
    """Within float tolerance: 1% of one AdamW step at lr 1e-2 (Adam divides by sqrt(v), so
    summation-order differences of tiny gradients show up at the step's scale)."""
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, worst


@pytest.mark.parametrize("kind", ["policy", "critic"])
def test_fsdp_over_two_ranks_equals_one_worker(kind, tiny_model_dir, tmp_path):
    one = run_ranks(1, _updates, 0, kind, tiny_model_dir, "ddp", 3, tmp_dir=str(tmp_path / "one"))
    two = run_ranks(2, _updates, free_port(), kind, tiny_model_dir, "fsdp", 3, tmp_dir=str(tmp_path / "two"), init=False)
    assert _global(two) == pytest.approx(_global(one), abs=1e-5)
    moved = max(float((one[0]["weights"][k] - one[0]["initial"][k]).abs().max()) for k in one[0]["weights"])
    assert moved > 1e-3  # the updates moved the model
    _close(two[0]["weights"], one[0]["weights"])
    assert two[1]["weights"] == {}  # rank 1 takes part in the gathering, rank 0 returns it
    # Each rank holds about half of the parameters and of the AdamW state.
    assert two[0]["param_numel"] + two[1]["param_numel"] == one[0]["param_numel"]
    assert two[0]["opt_bytes"] / one[0]["opt_bytes"] == pytest.approx(0.5, abs=0.05)


def test_two_critic_workers_under_ddp_match_one(tiny_model_dir, tmp_path):
    """The critic's forward goes through DDP, so its gradients are all-reduced: two workers
    stay one model (before, each drifted on its own rows)."""
    one = run_ranks(1, _updates, 0, "critic", tiny_model_dir, "ddp", 3, tmp_dir=str(tmp_path / "one"))
    two = run_ranks(2, _updates, free_port(), "critic", tiny_model_dir, "ddp", 3, tmp_dir=str(tmp_path / "two"),
                    init=False)
    _close(two[0]["weights"], one[0]["weights"])
    assert _global(two) == pytest.approx(_global(one), abs=1e-5)


def test_fsdp_resume_is_bitwise_exact(tiny_model_dir, tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    straight = run_ranks(2, _updates, free_port(), "policy", tiny_model_dir, "fsdp", 3, ckpt_dir,
                         tmp_dir=str(tmp_path / "a"), init=False)
    files = sorted(os.listdir(ckpt_dir))
    assert "policy-rank0-of-2.safetensors" in files and "policy-optim-rank1-of-2.safetensors" in files
    resumed = run_ranks(2, _updates, free_port(), "policy", tiny_model_dir, "fsdp", 2, None, ckpt_dir,
                        tmp_dir=str(tmp_path / "b"), init=False)
    a, b = straight[0]["weights"], resumed[0]["weights"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Offline, without a process group: the rank files make the full tensors of step 1.
    full = gather_shards(ckpt_dir, "policy")
    one_step = run_ranks(1, _updates, 0, "policy", tiny_model_dir, "ddp", 1, tmp_dir=str(tmp_path / "c"))
    _close({k: full[k] for k in one_step[0]["weights"]}, one_step[0]["weights"])


def _export(rank, world, port, model_dir, out_dir):
    w = _worker("policy", model_dir, rank, world, port, "fsdp")
    batch = make_batch(model_dir)
    part = select_rows(batch, split_rows(B, world)[rank])
    part["old_logprobs"] = w.forward(part)
    w.update([part], [float(batch["response_mask"].sum())])
    w.export(out_dir, {"stage": "test"})
    return {"weights": w.named_weights()}


def test_export_from_fsdp_is_a_plain_hf_folder(tiny_model_dir, tmp_path):
    out = str(tmp_path / "export")
    res = run_ranks(2, _export, free_port(), tiny_model_dir, out, tmp_dir=str(tmp_path / "r"), init=False)
    model = load_causal_lm(out)
    _close({k: v for k, v in model.state_dict().items() if k in res[0]["weights"]}, res[0]["weights"], atol=0)
    tok = load_tokenizer(out)
    ids = torch.tensor([tok("Where is the red key?").input_ids])
    trained = load_causal_lm(tiny_model_dir)
    trained.load_state_dict(res[0]["weights"], strict=False)
    a = model.generate(ids, max_new_tokens=8, do_sample=False)
    b = trained.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)


def test_micro_batches_accumulate_to_the_unaccumulated_step(tiny_model_dir):
    batch = make_batch(tiny_model_dir)
    n_tok = float(batch["response_mask"].sum())
    outs = []
    for mb in (8, 3, 1):
        w = _worker("policy", tiny_model_dir, 0, 1, 0, "ddp", mb=mb)
        part = dict(batch, old_logprobs=w.forward(batch))
        stats = w.update([part], [n_tok])
        outs.append((stats, w.named_weights()))
    for stats, weights in outs[1:]:
        assert stats["loss"] == pytest.approx(outs[0][0]["loss"], abs=1e-6)
        assert stats["clipfrac"] == pytest.approx(outs[0][0]["clipfrac"], abs=1e-6)
        # The accumulated gradient is the whole batch's: its norm agrees to float precision.
        assert stats["grad_norm"] == pytest.approx(outs[0][0]["grad_norm"], rel=1e-5)
        _close(weights, outs[0][1])


def test_bf16_compute_keeps_float32_master_weights(tiny_model_dir):
    """A step of 1e-5 relative size: bfloat16 parameters (8 mantissa bits, steps of ~0.4%)
    round it away; our float32 master weights keep it."""
    batch = make_batch(tiny_model_dir)
    n_tok = float(batch["response_mask"].sum())

    def changed(model_before, model_after):
        a = torch.cat([p.detach().float().reshape(-1) for p in model_before])
        b = torch.cat([p.detach().float().reshape(-1) for p in model_after])
        return a != b

    settings = EngineSettings(lr=1e-5, dtype="bfloat16", micro_batch_size=8)
    w = ModelWorker("policy", tiny_model_dir, settings, PPO)
    assert all(p.dtype == torch.float32 for p in w.model.parameters())
    before = [p.detach().clone() for p in w.model.parameters()]
    part = dict(batch, old_logprobs=w.forward(batch))
    w.update([part], [n_tok])
    ours = changed(before, list(w.model.parameters()))

    pure = load_causal_lm(tiny_model_dir, "bfloat16")
    eng = Engine(pure, settings)  # the same loss through bf16 parameters and a bf16 AdamW
    for p in pure.parameters():
        p.data = p.data.to(torch.bfloat16)
    eng.optimizer = torch.optim.AdamW(pure.parameters(), lr=1e-5, betas=(0.9, 0.95), foreach=False)
    before_pure = [p.detach().clone() for p in pure.parameters()]
    eng.step(part, lambda model, mb: w._loss(model, mb, n_tok))
    lost = changed(before_pure, list(pure.parameters()))
    # Weights with a gradient (embeddings of tokens not in the batch have none) all move in
    # float32; most of the same updates round away in bfloat16.
    assert float(ours.float().mean()) > 0.8
    assert float(lost[ours].float().mean()) < 0.5
    assert w.named_weights()["model.embed_tokens.weight"].dtype == torch.bfloat16  # exported/synced in bf16


def test_a_gpu_role_without_cuda_stops_with_the_role_and_key():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(NoGPUError, match=r"trainer: reserved a GPU \(resources.trainer.gpus_per_worker\)"):
        resolve_device(True, "trainer", "resources.trainer.gpus_per_worker")
    assert resolve_device(True, "trainer", "k", fake_gpus=True).type == "cpu"



def _stream(rank, world, trainer_port, bcast_port, model_dir, bucket_bytes):
    """Ranks 0-1: an FSDP trainer after one update; rank 2: a rollout-side receiver. Trainer
    rank 0 and the receiver form the broadcast group; trainer rank 1 only joins the gathers."""
    from rayrlhf.rollout.checksum import weights_checksum
    from rayrlhf.weight_sync import make_group, receive

    if rank == 2:
        meta = ModelWorker("policy", model_dir, EngineSettings(), PPO).weights_meta()  # names, shapes, dtypes
        got = receive(make_group("gloo", "127.0.0.1", bcast_port, 1, 2), meta, bucket_bytes)
        return {"weights": got, "checksum": weights_checksum(got)}
    w = _worker("policy", model_dir, rank, 2, trainer_port, "fsdp")
    batch = make_batch(model_dir)
    part = select_rows(batch, split_rows(B, 2)[rank])
    part["old_logprobs"] = w.forward(part)
    w.update([part], [float(batch["response_mask"].sum())])
    if rank == 0:
        w.join_broadcast("127.0.0.1", bcast_port, 2)
    sent = w.broadcast_weights(bucket_bytes)
    return {"sent": sent, "weights": w.named_weights()}


def test_sharded_trainer_streams_weights_bucket_by_bucket(tiny_model_dir, tmp_path):
    bucket = 64 << 10  # many buckets for the tiny model
    t0, t1, rx = run_ranks(3, _stream, free_port(), free_port(), tiny_model_dir, bucket,
                           tmp_dir=str(tmp_path / "r"), init=False)
    assert t1["sent"]["bytes"] == 0 and t1["weights"] == {}
    assert rx["checksum"] == t0["sent"]["checksum"]
    assert rx["weights"].keys() == t0["weights"].keys()
    assert all(torch.equal(rx["weights"][k], t0["weights"][k]) for k in rx["weights"])
    assert t0["sent"]["bytes"] == sum(v.numel() * v.element_size() for v in rx["weights"].values())


def test_gradient_checkpointing_gives_the_same_step(tiny_model_dir):
    batch = make_batch(tiny_model_dir)
    n_tok = float(batch["response_mask"].sum())
    norms = []
    for ckpt in (False, True):
        w = ModelWorker("policy", tiny_model_dir, EngineSettings(lr=1e-2, gradient_checkpointing=ckpt), PPO)
        assert w.model.is_gradient_checkpointing == ckpt
        norms.append(w.update([dict(batch, old_logprobs=w.forward(batch))], [n_tok])["grad_norm"])
    assert norms[1] == pytest.approx(norms[0], rel=1e-5)


def test_gpu_benchmark_runs_at_a_tiny_size():
    """`rayrlhf bench --gpu` on its smoke-test shape (on CPU here): the figures it prints exist."""
    from rayrlhf.engine.bench_gpu import run

    out = run("tiny", seq=32, micro=2, steps=1, warmup=0, strategy="ddp", peak=1e12)
    assert out["gpu/tokens_per_s"] > 0 and 0 < out["gpu/mfu"] < 1
    # PaLM's model FLOPs per token: 6 N + 12 L h s, N without the embedding lookup (tied head counted).
    n = out["gpu/params"]
    assert out["gpu/model_flops_per_token"] == 6 * n + 12 * 2 * 128 * 32


def test_critic_and_reference_take_the_policy_settings_they_do_not_set():
    from rayrlhf.config.ppo import DerivedModelSection, resolve_derived
    from rayrlhf.config.schema import ModelSection

    policy = ModelSection(name_or_path="sft", dtype="bfloat16", strategy="fsdp", gradient_checkpointing=True)
    critic = resolve_derived(DerivedModelSection(name_or_path="rm", cpu_offload=True), policy)
    assert (critic.name_or_path, critic.dtype, critic.strategy, critic.cpu_offload) == ("rm", "bfloat16", "fsdp", True)
    assert resolve_derived(DerivedModelSection(), policy) == policy


def _local_state(w):
    """This rank's parameter shards and AdamW state, copied."""
    from rayrlhf.engine.state import _local

    params = [_local(p).detach().clone() for p in w.model.parameters()]
    opt = [{k: _local(v).clone() for k, v in w.optimizer.state[p].items()} for p in w.model.parameters()]
    return params, opt


def _same_local(a, b) -> bool:
    (pa, oa), (pb, ob) = a, b
    return (all(torch.equal(x, y) for x, y in zip(pa, pb))
            and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(oa, ob)))


def _atomic(rank, world, port, model_dir):
    """On two FSDP ranks: an update whose 2nd mini-batch is NaN on rank 1 only, and a step
    whose loss is infinite on rank 1 only while every gradient is finite."""
    w = _worker("policy", model_dir, rank, world, port, "fsdp", mb=2)
    batch = make_batch(model_dir)
    part = select_rows(batch, split_rows(B, world)[rank])
    n = float(batch["response_mask"].sum())
    part["old_logprobs"] = w.forward(part)
    w.update([part], [n])  # AdamW state exists from here on
    before = _local_state(w)
    bad = dict(part, advantages=part["advantages"].clone())
    if rank == 1:
        bad["advantages"][0, 0] = float("nan")
    stats = w.update([part, bad, part], [n, n, n])
    undone = _same_local(_local_state(w), before)

    def loss_fn(model, mb):
        loss, stats = w._loss(model, mb, n)
        return loss + (float("inf") if rank == 1 else 0.0), stats  # a constant: the gradient stays finite

    step = w.engine.step(part, loss_fn)
    return {"skipped": stats["skipped"], "skipped_at": stats["skipped_at"], "undone": undone,
            "step_skipped": step["skipped"], "grad_norm": step["grad_norm"],
            "unchanged": _same_local(_local_state(w), before)}


def test_ranks_agree_and_an_update_is_undone_on_every_shard(tiny_model_dir, tmp_path):
    out = run_ranks(2, _atomic, free_port(), tiny_model_dir, tmp_dir=str(tmp_path / "atomic"), init=False)
    for r in out:
        assert r["skipped"] == 1.0 and r["skipped_at"] == 2.0 and r["undone"]
        # Rank 1's loss alone was non-finite: both ranks skip the step, so they stay one model.
        assert r["step_skipped"] == 1.0 and r["unchanged"] and 0 < r["grad_norm"] < float("inf")


def test_a_resumed_run_trains_at_its_configured_learning_rate(tiny_model_dir, tmp_path):
    """An edited learning rate applies after a resume: the checkpoint's optimizer state holds the
    old one. A constant rate is replaced; a schedule keeps its position at the new peak."""
    from rayrlhf.trainer.optim import build_scheduler

    w = ModelWorker("policy", tiny_model_dir, EngineSettings(lr=1e-3), PPO)
    w.save(str(tmp_path / "c"))
    same = ModelWorker("policy", tiny_model_dir, EngineSettings(lr=1e-3), PPO)
    assert same.load(str(tmp_path / "c")) is None
    edited = ModelWorker("policy", tiny_model_dir, EngineSettings(lr=4e-4), PPO)
    assert edited.load(str(tmp_path / "c")) == {"checkpoint_lr": 1e-3, "lr": 4e-4}
    assert [g["lr"] for g in edited.optimizer.param_groups] == [pytest.approx(4e-4)] * len(
        edited.optimizer.param_groups)

    def scheduled(lr):
        e = ModelWorker("policy", tiny_model_dir, EngineSettings(lr=lr), PPO).engine
        e.scheduler = build_scheduler(e.optimizer, 10, 0.5, "linear", 0.0)  # 5 warmup steps, then down
        return e

    e = scheduled(1e-3)
    for _ in range(3):
        e.optimizer.step()
        e.scheduler.step()
    # warm-up multiplier (step + 1) / 5 at step 3
    assert e.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 4 / 5)
    e.save(str(tmp_path / "s"), "model")
    r = scheduled(2e-3)
    assert r.load(str(tmp_path / "s"), "model") == pytest.approx(1e-3)
    assert r.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * 4 / 5)
    r.optimizer.step()
    r.scheduler.step()
    assert r.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * 5 / 5)


def test_micro_batches_go_by_length_and_are_cut_to_their_longest_row(tiny_model_dir):
    """Rows of very different lengths: with micro-batches of 2 the long rows share one and the
    short rows another, each cut to its own width; logprobs, values and the step equal those
    of the uncut whole batch (one micro-batch) up to float rounding."""
    tok = load_tokenizer(tiny_model_dir)
    lengths = [3, 30, 5, 28]
    prompts = [tok("Where is the red key?", add_special_tokens=False).input_ids for _ in lengths]
    responses = [[(7 * i + j) % 200 + 10 for j in range(n)] for i, n in enumerate(lengths)]
    batch = build_batch(prompts, responses, tok.pad_token_id)
    g = torch.Generator().manual_seed(1)
    batch["advantages"] = torch.randn(batch["response_mask"].shape, generator=g) * batch["response_mask"]
    batch["returns"] = torch.randn(batch["response_mask"].shape, generator=g) * batch["response_mask"]
    n_tok, width = float(batch["response_mask"].sum()), batch["input_ids"].shape[1]
    p = len(prompts[0])
    for kind in ("policy", "critic"):
        results = []
        for mb in (4, 2):
            w = _worker(kind, tiny_model_dir, 0, 1, 0, "ddp", mb=mb)
            w.engine.s.forward_micro_batch_size = mb
            seen = []
            forward_fn = w._forward_fn(1.0)
            w._forward_fn = lambda t, f=forward_fn: (lambda model, m: seen.append(m["input_ids"].shape[1]) or f(model, m))
            out = w.forward(batch)
            assert out.shape == batch["response_mask"].shape and torch.equal(out == 0, batch["response_mask"] == 0)
            if kind == "policy":
                part = dict(batch, old_logprobs=out)
            else:
                part = dict(batch, values=out)
            loss = w._loss
            w._loss = lambda model, m, *a, f=loss: seen.append(m["input_ids"].shape[1]) or f(model, m, *a)
            stats = w.update([part], [n_tok])
            results.append((out, stats, w.named_weights(), seen))
        (out4, stats4, weights4, seen4), (out2, stats2, weights2, seen2) = results
        assert seen4 == [width, width]  # one forward, one update micro-batch, the whole width
        assert seen2 == [p + 30, p + 5, p + 30, p + 5]  # the two long rows, then the two short
        assert torch.allclose(out2, out4, atol=1e-5)
        assert stats2["loss"] == pytest.approx(stats4["loss"], abs=1e-6)
        assert stats2["grad_norm"] == pytest.approx(stats4["grad_norm"], rel=1e-5)
        _close(weights2, weights4)
