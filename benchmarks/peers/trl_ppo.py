"""TRL's PPO (trl.experimental.ppo, TRL 1.12) on the benchmark's work; run in TRL's virtualenv.

    python trl_ppo.py --work work.json --out result.json

work.json (written by compare.py) names the model folder, the prompts (token ids, rendered by
rayrlhf's prompt rendering so both sides see the same tokens) and the settings. The rule reward
(reward.py) replaces TRL's reward model: `get_reward` is wrapped so that, for the RuleReward
module only, it decodes the responses and scores them; the value model and everything else
is TRL's own code. Generation is transformers `generate` (TRL's vLLM colocate mode fails on the
CPU build of vLLM at its first weight sync). Step times are taken at each step's log call."""
import os
import sys
import time

T0 = time.perf_counter()

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reward import reward  # noqa: E402
from trl_common import StepClock, load_work, write_result  # noqa: E402


class RuleReward(torch.nn.Module):
    """Stands where TRL expects a reward model; scored in `rule_get_reward`."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)


def install_rule_reward(ppo_module):
    original = ppo_module.get_reward

    def rule_get_reward(model, query_responses, pad_token_id, context_length):
        if not isinstance(model, RuleReward):
            return original(model, query_responses, pad_token_id, context_length)
        tok = model.tokenizer
        scores = []
        for row in query_responses:
            prompt = tok.decode(row[:context_length], skip_special_tokens=True)
            response = tok.decode(row[context_length:], skip_special_tokens=True)
            scores.append(reward(prompt, response))
        return None, torch.tensor(scores, dtype=torch.float32), None

    ppo_module.get_reward = rule_get_reward


def main() -> int:
    work, out = load_work()
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    install_rule_reward(ppo_module)
    model_dir = work["model"]
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    for m in (policy, ref, value):
        m.config.pad_token_id = tok.pad_token_id
    per_step = work["prompts_per_step"] * work["n_samples"]
    steps = work["steps"]
    # TRL samples once per prompt: n samples per prompt are n copies of the prompt in a batch.
    ids = [p for p in work["prompt_ids"] for _ in range(work["n_samples"])]
    ids = (ids * (1 + per_step * steps // len(ids)))[:per_step * steps]
    dataset = Dataset.from_dict({"input_ids": ids})
    args = PPOConfig(
        output_dir=work["out_dir"], report_to="none", use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
        num_mini_batches=per_step // work["mini_batch_size"], local_rollout_forward_batch_size=per_step,
        num_ppo_epochs=work["ppo_epochs"], response_length=work["max_new_tokens"], temperature=1.0,
        total_episodes=per_step * steps, learning_rate=work["lr"], kl_coef=work["kl_coef"],
        stop_token="eos", missing_eos_penalty=None, num_sample_generations=0, logging_steps=1,
        save_strategy="no", seed=work["seed"], gradient_checkpointing=False)
    clock = StepClock(work["out_dir"], "objective/scores")
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref,
                         reward_model=RuleReward(tok), train_dataset=dataset, value_model=value,
                         callbacks=[clock])
    t_start = time.perf_counter()
    trainer.train()
    write_result(out, T0, t_start, clock, per_step, scores=clock.values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
