"""Supervised fine-tuning: next-token loss on the response tokens only."""
from __future__ import annotations

import math

from rayrlhf.algo.losses import sft_loss
from rayrlhf.data.tokenize import collate_sft, encode_sft
from rayrlhf.models.tokenizer import tokenizer_for
from rayrlhf.models import load_causal_lm


def encode_sft_records(records, tokenizer, max_len: int) -> tuple[list[dict], dict]:
    """Records -> token examples; also counts of what had to be cut (reported, never hidden)."""
    stats: dict = {}
    return [encode_sft(tokenizer, r, max_len, stats) for r in records], stats


class SFTTask:
    name = "sft"

    def __init__(self, cfg):
        self.cfg = cfg
        self.tokenizer = tokenizer_for(cfg.model)

    def build_model(self):
        """On CPU in float32 (the engine keeps float32 master weights and computes in model.dtype);
        under LoRA the frozen base loads in model.dtype."""
        from rayrlhf.trainer.loop import engine_settings

        m, dtype = self.cfg.model, engine_settings(self.cfg, self.name).load_dtype(trainable=True)
        return load_causal_lm(m.name_or_path, dtype, m.trust_remote_code)

    def collate(self, examples):
        return collate_sft(examples, self.tokenizer.pad_token_id)

    def normalizer(self, examples) -> float:
        # Target tokens of the whole global batch: each rank divides its sum by this.
        return float(sum(sum(ex["loss_mask"]) for ex in examples))

    def _forward(self, model, batch, num_tokens=None):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return sft_loss(logits.float(), batch["input_ids"], batch["loss_mask"], num_tokens=num_tokens)

    def loss(self, model, batch, normalizer):
        loss, n_tokens = self._forward(model, batch, num_tokens=normalizer)
        n = float(n_tokens)
        return loss, {"nll_sum": float(loss.detach()) * normalizer, "tokens": n}

    def train_metrics(self, sums):
        nll = sums["nll_sum"] / max(sums["tokens"], 1.0)
        return {"train/loss": nll, "train/ppl": math.exp(min(nll, 50.0))}

    def eval_keys(self):
        return ("nll_sum", "tokens")

    def eval_sums(self, model, batch):
        loss, n_tokens = self._forward(model, batch)
        n = float(n_tokens)
        return {"nll_sum": float(loss) * n, "tokens": n}

    def eval_metrics(self, sums):
        nll = sums["nll_sum"] / max(sums["tokens"], 1.0)
        return {"eval/loss": nll, "eval/ppl": math.exp(min(nll, 50.0)), "eval/tokens": sums["tokens"]}

    def export_info(self, summary) -> dict:
        """What rayrlhf.json of the export records."""
        return {"stage": "sft", "summary": summary}
