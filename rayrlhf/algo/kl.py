"""Per-token KL estimators and KL-coefficient controllers for the RLHF KL penalty."""

from __future__ import annotations

from typing import Any

import torch

KL_KINDS = ("k1", "k2", "k3", "abs")


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1"
) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from log-probabilities of sampled tokens.

    With the tokens sampled from pi and log r = log ref - log pi (Schulman 2020,
    "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html):

    - ``"k1"``: log pi - log ref = -log r. Unbiased, high variance, can be negative.
    - ``"k2"``: 0.5 * (log pi - log ref)^2. Biased, low variance, non-negative.
    - ``"k3"``: r - log r - 1 = exp(log ref - log pi) - (log ref - log pi) - 1. Unbiased,
      low variance, non-negative.
    - ``"abs"``: |log pi - log ref|.

    Args:
        logprobs: Log-probabilities under the policy. Shape: (B, T).
        ref_logprobs: Log-probabilities under the reference model. Shape: (B, T).
        kind: One of ``"k1"``, ``"k2"``, ``"k3"``, ``"abs"``.

    Returns:
        Per-token KL estimate. Shape: (B, T).
    """
    log_ratio = logprobs - ref_logprobs  # log pi - log ref
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        # Clamp so that exp(log r) stays finite where the two models disagree wildly.
        neg_log_ratio = torch.clamp(-log_ratio, min=-20.0, max=20.0)  # log r
        return torch.exp(neg_log_ratio) - neg_log_ratio - 1.0
    if kind == "abs":
        return log_ratio.abs()
    raise ValueError(f"unknown KL estimator kind={kind!r}; expected one of {KL_KINDS}")


class FixedKLController:
    """A constant KL coefficient.

    Args:
        kl_coef: The coefficient beta of the KL penalty.
    """

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing; present so both controllers are used the same way."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """KL coefficient adapted towards a target KL (Ziegler et al. 2019, section 2.2).

    e_t = clip(KL_t / target - 1, -0.2, 0.2);  beta_{t+1} = beta_t * (1 + K_beta * e_t), with
    K_beta = n_steps / horizon, where n_steps is the number of samples (or steps) the KL was
    measured over.

    Args:
        init_kl_coef: Initial beta.
        target: Target KL per sequence (in the same units as ``current_kl``).
        horizon: Number of samples over which beta may change by a factor of about e^0.2.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move beta towards the value that keeps the KL at ``target``.

        Args:
            current_kl: Measured KL of the latest batch.
            n_steps: Number of samples that batch held.
        """
        # e = clip(KL / target - 1, -0.2, 0.2)
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        # beta <- beta * (1 + e * n / horizon)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))


def make_kl_controller(kind: str, **kwargs: Any) -> FixedKLController | AdaptiveKLController:
    """Build a KL controller by name.

    Args:
        kind: ``"fixed"`` (kwargs: ``kl_coef``) or ``"adaptive"`` (kwargs: ``init_kl_coef``,
            ``target``, ``horizon``).
        **kwargs: Passed to the controller's constructor.

    Returns:
        The controller.
    """
    controllers = {"fixed": FixedKLController, "adaptive": AdaptiveKLController}
    if kind not in controllers:
        raise ValueError(
            f"unknown KL controller kind={kind!r}; expected one of {list(controllers)}"
        )
    return controllers[kind](**kwargs)
