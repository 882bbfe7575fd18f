"""toyworld: a seeded synthetic assistant task whose ground truth is known.

Prompts live in a small, fixed world of people, objects and places (``world.py``); a quarter
of them are unsafe requests. Gold helpfulness and safety rewards are exact functions of (prompt,
response) text (``gold.py``); candidate responses of known quality serve as SFT
demonstrations and as the annotation pool (``responses.py``); simulated annotators label
preferences with Bradley-Terry noise and Llama 2 margin labels (``annotators.py``);
``write_toyworld`` writes it all in the real dataset formats (``write.py``).

Use the gold reward from a config as ``rayrlhf.tasks.toyworld:gold_reward``.
"""

from rayrlhf.tasks.toyworld.annotators import DEFAULT_TEMPERATURE, Annotator, Judgement
from rayrlhf.tasks.toyworld.gold import gold_helpfulness, gold_reward, gold_safety
from rayrlhf.tasks.toyworld.responses import demonstration, respond, sample_response
from rayrlhf.tasks.toyworld.world import Prompt, is_unsafe, parse_prompt, sample_prompt, sample_prompts
from rayrlhf.tasks.toyworld.write import write_toyworld

__all__ = [
    "Annotator",
    "DEFAULT_TEMPERATURE",
    "Judgement",
    "Prompt",
    "demonstration",
    "gold_helpfulness",
    "gold_reward",
    "gold_safety",
    "is_unsafe",
    "parse_prompt",
    "respond",
    "sample_prompt",
    "sample_prompts",
    "sample_response",
    "write_toyworld",
]
