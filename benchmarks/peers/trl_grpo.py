"""TRL's GRPO (trl.GRPOTrainer, TRL 1.16) on the benchmark's work; run in TRL's virtualenv.

    python trl_grpo.py --work work.json --out result.json

work.json (written by compare.py) names the model folder, the prompts (token ids rendered by
rayrlhf's prompt rendering) and the settings. TRL takes prompts as text and tokenizes them
itself, so each prompt is decoded from its ids; the ids TRL then gets back are checked against
the originals and the share that differ is reported (``prompt_tokens_differ``). The reward is
the same rule reward (reward.py) as a TRL reward function; generation is transformers
`generate`. Step times are taken at each step's log call (trl_common.StepClock)."""
import os
import sys
import time

T0 = time.perf_counter()

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reward import reward  # noqa: E402
from trl_common import StepClock, load_work, write_result  # noqa: E402


def rule_reward(prompts, completions, **kwargs):
    return [reward(p, c) for p, c in zip(prompts, completions)]


def main() -> int:
    work, out = load_work()
    from trl import GRPOConfig, GRPOTrainer

    model_dir = work["model"]
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    texts = [tok.decode(ids, skip_special_tokens=False) for ids in work["prompt_ids"]]
    differ = sum(tok(t, add_special_tokens=False).input_ids != ids for t, ids in zip(texts, work["prompt_ids"]))
    n, per_step, steps = work["n_samples"], work["prompts_per_step"] * work["n_samples"], work["steps"]
    dataset = Dataset.from_dict({"prompt": (texts * (1 + work["prompts_per_step"] * steps // len(texts)))})
    args = GRPOConfig(
        output_dir=work["out_dir"], report_to="none", use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=per_step, gradient_accumulation_steps=1, num_generations=n,
        max_completion_length=work["max_new_tokens"], temperature=1.0, num_iterations=work["ppo_epochs"],
        max_steps=steps, learning_rate=work["lr"], beta=work["kl_coef"], logging_steps=1, save_strategy="no",
        seed=work["seed"], gradient_checkpointing=False, disable_dropout=True, shuffle_dataset=False)
    clock = StepClock(work["out_dir"], "reward")
    trainer = GRPOTrainer(model=policy, reward_funcs=[rule_reward], args=args, train_dataset=dataset,
                          processing_class=tok, callbacks=[clock])
    t_start = time.perf_counter()
    trainer.train()
    write_result(out, T0, t_start, clock, per_step, prompt_tokens_differ=differ / len(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
