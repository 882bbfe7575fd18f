"""Pure RLHF math: losses, advantages, KL estimators, reward combination, best-of-K.

Functions of tensors and masks only; no Ray, no torch.distributed, no config objects.
"""

from rayrlhf.algo.advantages import gae, group_normalized_advantages, whiten_advantages
from rayrlhf.algo.best_of_k import (
    analytic_best_of_k_kl,
    best_of_k_stats,
    expected_best_of_k,
    select_best_of_k,
)
from rayrlhf.algo.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
    make_kl_controller,
)
from rayrlhf.algo.logprobs import entropy_from_logits, token_logprobs
from rayrlhf.algo.losses import (
    dpo_loss,
    pairwise_reward_loss,
    ppo_policy_loss,
    rrhf_loss,
    sft_loss,
    value_loss,
)
from rayrlhf.algo.masked import masked_mean, masked_sum, masked_var, masked_whiten
from rayrlhf.algo.rewards import (
    combine_linear,
    combine_rewards,
    inverse_sigmoid,
    llama2_safety_gate,
    token_level_rewards,
    whiten_scores,
)

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "analytic_best_of_k_kl",
    "best_of_k_stats",
    "combine_linear",
    "combine_rewards",
    "dpo_loss",
    "entropy_from_logits",
    "expected_best_of_k",
    "gae",
    "group_normalized_advantages",
    "inverse_sigmoid",
    "kl_penalty",
    "llama2_safety_gate",
    "make_kl_controller",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "pairwise_reward_loss",
    "ppo_policy_loss",
    "rrhf_loss",
    "select_best_of_k",
    "sft_loss",
    "token_level_rewards",
    "token_logprobs",
    "value_loss",
    "whiten_advantages",
    "whiten_scores",
]
