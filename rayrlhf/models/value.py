"""The critic's per-token values as one module, so DDP and FSDP see (and reduce) its forward."""
from __future__ import annotations

import torch
from torch import nn


class TokenValues(nn.Module):
    """V(s_t) for every position of a scalar-head model (``AutoModelForSequenceClassification``).

    The classifier pools its last real token; a critic needs the head on every token, so this
    runs the base model and the score head itself. Shape: (B, T-1): column t is the state
    after tokens 0..t, before token t+1 is generated.
    """

    def __init__(self, scalar_model: nn.Module):
        super().__init__()
        self.scalar_model = scalar_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = self.scalar_model
        hidden = getattr(m, m.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return m.score(hidden[:, :-1]).float().squeeze(-1)
