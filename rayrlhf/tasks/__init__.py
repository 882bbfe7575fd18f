"""Bundled tasks with a known gold reward (``toyworld``).

Configs name a reward function by import path, ``"module.path:attribute"``, for example
``"rayrlhf.tasks.toyworld:gold_reward"``: a callable (prompt: str, response: str) -> float.
``resolve`` turns such a string into the callable; no registry is involved.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

TOYWORLD_GOLD_REWARD = "rayrlhf.tasks.toyworld:gold_reward"
TOYWORLD_GOLD_HELPFULNESS = "rayrlhf.tasks.toyworld:gold_helpfulness"
TOYWORLD_GOLD_SAFETY = "rayrlhf.tasks.toyworld:gold_safety"


def resolve(path: str) -> Callable:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"expected 'module.path:attribute', got {path!r}")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
