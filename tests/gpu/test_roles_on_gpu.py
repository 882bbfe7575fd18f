"""The model roles on a CUDA device, used as plain classes (no Ray, no vLLM): what a GPU
cluster runs inside its actors. Skipped where there is no GPU; run on a GPU machine with
``python -m pytest -m gpu tests/gpu``."""
import pytest
import torch

from rayrlhf.actors.model_worker import ModelWorker
from rayrlhf.actors.reward import RewardModelWorker
from rayrlhf.engine import EngineSettings
from rayrlhf.engine.settings import CriticLoss, PolicyLoss
from rayrlhf.models import export_hf, load_causal_lm, load_scalar_model, load_tokenizer
from tests.engine.test_engine import make_batch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GPU = dict(wants_gpu=True, lr=1e-4, micro_batch_size=4, dtype="bfloat16")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_policy_and_critic_update_in_bf16_on_the_gpu(tiny_model_dir, strategy):
    """bf16 compute, float32 master weights on the GPU; FSDP2 on a one-rank NCCL group."""
    batch = make_batch(tiny_model_dir)
    n_tok = float(batch["response_mask"].sum())
    pol = ModelWorker("policy", tiny_model_dir, EngineSettings(strategy=strategy, **GPU), PolicyLoss())
    cri = ModelWorker("critic", tiny_model_dir, EngineSettings(strategy=strategy, **GPU), CriticLoss())
    assert pol.engine.device.type == "cuda"
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in pol.model.parameters())
    old = pol.forward(batch)
    assert old.device.type == "cpu" and old.dtype == torch.float32  # results come back on CPU, fp32
    stats = pol.update([dict(batch, old_logprobs=old)], [n_tok])
    assert stats["skipped"] == 0 and stats["grad_norm"] > 0
    assert (pol.forward(batch) - old).abs().max() > 0
    values = cri.forward(batch)
    losses = [cri.update([dict(batch, values=values, returns=batch["returns"])], [n_tok])["loss"] for _ in range(5)]
    assert losses[-1] < losses[0]


def test_micro_batched_gpu_step_equals_the_whole_batch(tiny_model_dir):
    batch = make_batch(tiny_model_dir)
    n_tok = float(batch["response_mask"].sum())
    norms = []
    for mb in (8, 2):
        w = ModelWorker("policy", tiny_model_dir, EngineSettings(wants_gpu=True, lr=1e-4, micro_batch_size=mb),
                        PolicyLoss())
        norms.append(w.update([dict(batch, old_logprobs=w.forward(batch))], [n_tok])["grad_norm"])
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)


def test_reward_model_scores_on_the_gpu_match_cpu(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    export_hf(load_scalar_model(tiny_model_dir, pad_token_id=tok.pad_token_id), tok, str(tmp_path / "rm"))
    prompts = [[{"role": "user", "content": "Where is the red key?"}]] * 2
    texts = ["The red key is in the kitchen.", "I can't help with that."]
    gpu = RewardModelWorker("h", str(tmp_path / "rm"), wants_gpu=True, normalize=False)
    assert gpu.device.type == "cuda"
    cpu = RewardModelWorker("h", str(tmp_path / "rm"), normalize=False)
    assert gpu.score(prompts, texts) == pytest.approx(cpu.score(prompts, texts), abs=1e-3)


def test_hf_generation_on_the_gpu(tiny_model_dir):
    from rayrlhf.rollout import RolloutSection
    from rayrlhf.rollout.hf_backend import HFBackend

    backend = HFBackend(tiny_model_dir, cfg=RolloutSection(backend="hf", temperature=1.0, max_new_tokens=8,
                                                            max_model_len=128))
    assert backend.device.type == "cuda"
    tok = load_tokenizer(tiny_model_dir)
    ids = tok("Where is the red key?").input_ids
    a = backend.generate([ids, ids], n=2, seed=3)
    b = backend.generate([ids, ids], n=2, seed=3)
    assert [s.response_ids for s in a] == [s.response_ids for s in b] and len(a) == 4
    assert all(len(s.logprobs) == len(s.response_ids) for s in a)


def test_export_from_the_gpu_loads_on_cpu(tiny_model_dir, tmp_path):
    w = ModelWorker("policy", tiny_model_dir, EngineSettings(strategy="fsdp", **GPU), PolicyLoss())
    batch = make_batch(tiny_model_dir)
    w.update([dict(batch, old_logprobs=w.forward(batch))], [float(batch["response_mask"].sum())])
    w.export(str(tmp_path / "out"))
    model = load_causal_lm(str(tmp_path / "out"), "bfloat16")
    want = w.named_weights()
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())
