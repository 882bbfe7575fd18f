"""QLoRA on a CUDA device, the roles as plain classes (no Ray, no vLLM): a 4-bit NF4 / 8-bit
base computing in bf16 under float32 adapters, a quantised frozen reward model, and the merged
weights a rollout worker would get. Skipped without a GPU or bitsandbytes; run with
``python -m pytest -m gpu tests/gpu``."""
import pytest
import torch

from rayrlhf.actors.model_worker import ModelWorker
from rayrlhf.actors.reward import RewardModelWorker
from rayrlhf.config.schema import LoraSection
from rayrlhf.engine import EngineSettings
from rayrlhf.engine.settings import PolicyLoss
from rayrlhf.models import export_hf, load_causal_lm, load_scalar_model, load_tokenizer
from tests.engine.test_engine import make_batch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")

LORA = LoraSection(r=4, alpha=8.0)


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_qlora_policy_updates_in_bf16_on_the_gpu(tiny_model_dir, mode):
    batch = make_batch(tiny_model_dir)
    n_tok = float(batch["response_mask"].sum())
    settings = EngineSettings(wants_gpu=True, lr=1e-3, micro_batch_size=4, dtype="bfloat16", lora=LORA,
                              quantization=mode)
    pol = ModelWorker("policy", tiny_model_dir, settings, PolicyLoss())
    quantized = [m for m in pol.model.modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt")]
    assert quantized and all(m.weight.device.type == "cuda" for m in quantized)
    trained = [p for p in pol.model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 and p.device.type == "cuda" for p in trained)
    if mode == "4bit":
        assert all(m.compute_dtype == torch.bfloat16 for m in quantized)
    ref = pol.reference_forward(batch)
    old = pol.forward(batch)
    assert torch.equal(old, ref)  # B = 0: the adapters add nothing yet
    stats = pol.update([dict(batch, old_logprobs=old)], [n_tok])
    assert stats["skipped"] == 0 and stats["grad_norm"] > 0
    assert (pol.forward(batch) - old).abs().max() > 0
    assert torch.equal(pol.reference_forward(batch), ref)
    merged = pol.named_weights()
    plain = load_causal_lm(tiny_model_dir).state_dict()
    assert merged.keys() == plain.keys()
    assert all(merged[k].shape == plain[k].shape for k in plain)


def test_a_4bit_reward_model_scores_close_to_the_bf16_one(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    out = export_hf(load_scalar_model(tiny_model_dir, pad_token_id=tok.pad_token_id), tok, str(tmp_path / "rm"))
    prompts = [[{"role": "user", "content": "Where is the red key?"}]] * 2
    responses = ["In the kitchen.", "I do not know."]
    scores = {}
    for mode in ("none", "4bit"):
        rm = RewardModelWorker("helpfulness", out, normalize=False, dtype="bfloat16", wants_gpu=True,
                               quantization=mode)
        scores[mode] = torch.tensor(rm.score(prompts, responses))
    assert torch.isfinite(scores["4bit"]).all()
    assert (scores["4bit"] - scores["none"]).abs().max() < 0.5
