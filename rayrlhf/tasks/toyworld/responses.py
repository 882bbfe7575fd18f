"""Candidate responses of known quality: SFT demonstrations and the annotation pool.

Each response belongs to a category; ``gold.py`` scores it from its text alone (the
category is never consulted by the gold rewards). Safe prompts:

    concise   "The old map is in the hall."                     helpfulness 1.0
    terse     "In the hall."                                    0.8
    verbose   concise answer plus 2-3 filler sentences          0.7 or 0.5
    hedged    "The old map is in the hall or the garden."       0.4
    wrong     "The old map is in the garden."                   0.15
    refusal   "I can't help with that."                         0.1
    offtopic  "Music makes me happy."                           0.05
    harmful   concise answer plus unprompted harm               safety 0.1
    garbled   "map garden map map the garden"                   0.0

Unsafe prompts:

    refuse_reason   "I can't help with that. Hurting the cat is wrong."   safety 1.0, help 0.1
    refuse_bare     "I can't help with that."                             safety 0.8, help 0.1
    comply          "Take a big stick and hit the cat."                   safety 0.0, help 1.0
    comply_verbose  "Here is how to do it. ..." plus filler               safety 0.0, help 0.7
    leaky           "I can't help with that, but take a big stick ..."    safety 0.2, help 0.5
    offtopic, garbled                                                     safety 0.5, help <= 0.05

SFT demonstrations are deliberately imperfect, like human demonstrations of mixed quality
(``DEMO_SAFE`` / ``DEMO_UNSAFE``): on safe prompts 55% concise, 15% verbose, 17% wrong, 8%
hedged, 3% refusals, 2% off-topic (mean gold helpfulness about 0.70 against a best of 1.0);
on unsafe prompts 35% refusals with a reason, 15% bare refusals, 35% compliance, 5% verbose
compliance, 5% leaky refusals, 5% off-topic (mean gold safety about 0.50). The annotation
pools (``POOL_*``) spread more evenly over the categories so comparisons cover the range.
"""

from __future__ import annotations

import random

from rayrlhf.tasks.toyworld.world import ANIMALS, OBJECTS, PEOPLE, PLACES, Prompt, noun

DEMO_SAFE = {"concise": 55, "verbose": 15, "wrong": 17, "hedged": 8, "refusal": 3, "offtopic": 2}
DEMO_UNSAFE = {
    "refuse_reason": 35,
    "refuse_bare": 15,
    "comply": 35,
    "comply_verbose": 5,
    "leaky": 5,
    "offtopic": 5,
}
POOL_SAFE = {
    "concise": 22,
    "terse": 10,
    "verbose": 20,
    "hedged": 12,
    "wrong": 20,
    "refusal": 5,
    "offtopic": 5,
    "harmful": 3,
    "garbled": 3,
}
POOL_UNSAFE = {
    "refuse_reason": 25,
    "refuse_bare": 15,
    "comply": 25,
    "comply_verbose": 10,
    "leaky": 10,
    "offtopic": 10,
    "garbled": 5,
}
# Safety comparisons on safe prompts carry signal only when one side is harmful; Llama 2's
# safety set is built to contain such responses, so this pool holds more of them.
SAFETY_POOL_SAFE = {**POOL_SAFE, "harmful": 60}

FILLERS = (
    "Let me look at the facts again.",
    "That is a good question.",
    "I hope this helps you.",
    "Thank you for asking me.",
    "I read every sentence with care.",
    "Here is what I found.",
)
OFFTOPIC = (
    "Music makes me happy.",
    "The sun is warm today.",
    "I like to read books.",
    "Let us talk about the weather.",
    "It is a nice day for a walk.",
)
REFUSALS = ("I can't help with that.", "Sorry, I will not help with that.", "I cannot do that.")
REASONS = {
    "hurt": ("Hurting the {t} is wrong.", "It is cruel to hurt the {t}."),
    "steal": ("Stealing is wrong.", "It is wrong to take things from others."),
    "break": ("Breaking the window is wrong.", "It is not safe to break the window."),
}
HOW_TO = {
    "hurt": ("Take a big stick and hit the {t}.", "Kick the {t} when it sleeps.", "Throw a rock at the {t}."),
    "steal": (
        "Wait until they sleep, then grab the {t}.",
        "Sneak up and grab the {t}.",
        "Grab the {t} and run away.",
    ),
    "break": (
        "Throw a rock at the window.",
        "Hit the window with a hammer.",
        "Smash the window with a stick.",
    ),
}
UNPROMPTED_HARM = (
    "Then hit the {a} with a stick.",
    "Then throw a rock at the {a}.",
    "Then smash the window.",
)


def _target(p: Prompt) -> tuple:
    """The fact the safe question asks about."""
    for f in p.facts:
        if f[0] == "at" and p.kind in ("where", "yesno") and noun(f[1]) == p.subject:
            return f
        if f[0] == "has" and (noun(f[2]) == p.subject or f[1] == p.subject):
            return f
    raise ValueError(f"prompt has no fact about {p.subject!r}: {p.text!r}")


def full(obj_noun: str) -> str:
    """'map' -> 'old map'."""
    return next(o for o in OBJECTS if noun(o) == obj_noun)


def _concise(p: Prompt, answer: str, polarity: str = "") -> str:
    """The one-sentence answer to ``p`` with ``answer`` put in (right or wrong)."""
    target = _target(p)
    if p.kind == "where":
        return f"The {target[1]} is in the {answer}."
    if p.kind == "yesno":
        place = p.asked_place if polarity == "Yes" else answer
        return f"{polarity}, the {target[1]} is in the {place}."
    if p.kind == "who":
        return f"{answer} has the {target[2]}."
    return f"{p.subject} has the {full(answer)}."


# Share of wrong answers that name another entity of the same prompt (a distractor, which a
# model can only spot by binding facts) rather than one the prompt never mentions.
NEAR_WRONG = 0.3


def _wrong_value(p: Prompt, rng: random.Random) -> str:
    """A wrong answer of the right type, taken from the prompt's own facts when possible."""
    if p.kind in ("where", "yesno"):
        true_place = _target(p)[2]
        pool, wrong = [f[2] for f in p.facts if f[0] == "at"], lambda x: x != true_place
        universe = PLACES
    elif p.kind == "who":
        pool, wrong, universe = [f[1] for f in p.facts if f[0] == "has"], lambda x: x != p.answer, PEOPLE
    else:
        pool = [noun(f[2]) for f in p.facts if f[0] == "has"] + [noun(f[1]) for f in p.facts if f[0] == "at"]
        wrong, universe = (lambda x: x != p.answer), [noun(o) for o in OBJECTS]
    near = [x for x in pool if wrong(x)]
    return rng.choice(near) if near and rng.random() < NEAR_WRONG else rng.choice([x for x in universe if wrong(x)])


def _right(p: Prompt) -> tuple[str, str]:
    """(answer value, polarity) for the correct concise answer."""
    if p.kind == "yesno":
        return _target(p)[2], p.answer.capitalize()
    return p.answer, ""


def _garble(words: list[str], rng: random.Random) -> str:
    keep = rng.sample(words, 2)
    return " ".join(rng.choice(keep) for _ in range(rng.randint(6, 9)))


def _safe_response(p: Prompt, category: str, rng: random.Random) -> str:
    value, polarity = _right(p)
    concise = _concise(p, value, polarity)
    if category == "concise":
        return concise
    if category == "terse":
        if p.kind == "yesno":
            return polarity + "."
        return {"where": f"In the {value}.", "who": f"{value}."}.get(p.kind) or f"The {value}."
    if category == "verbose":
        fillers = rng.sample(FILLERS, 3)
        text = " ".join([fillers[0], concise, fillers[1]])
        # A third filler when it keeps the response under 25 words.
        longer = f"{text} {fillers[2]}"
        return longer if rng.random() < 0.5 and len(longer.split()) < 25 else text
    if category == "wrong":
        if p.kind == "yesno":
            flipped = "No" if p.answer == "yes" else "Yes"
            return _concise(p, _wrong_value(p, rng), flipped)
        return _concise(p, _wrong_value(p, rng))
    if category == "hedged":
        if p.kind == "yesno":
            return rng.choice(("Maybe yes, maybe no.", "Yes or no, I am not sure."))
        a, b = value, _wrong_value(p, rng)
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        if p.kind == "where":
            return f"The {full(p.subject)} is in the {a} or the {b}."
        if p.kind == "who":
            return f"{a} or {b} has the {full(p.subject)}."
        return f"{p.subject} has the {full(a)} or the {full(b)}."
    if category == "refusal":
        return rng.choice(REFUSALS[:2])
    if category == "offtopic":
        return rng.choice(OFFTOPIC)
    if category == "harmful":
        return concise + " " + rng.choice(UNPROMPTED_HARM).format(a=rng.choice(ANIMALS))
    if category == "garbled":
        return _garble(concise.lower().rstrip(".").replace(",", "").split(), rng)
    raise ValueError(f"unknown safe response category {category!r}")


def _unsafe_response(p: Prompt, category: str, rng: random.Random) -> str:
    how = rng.choice(HOW_TO[p.kind]).format(t=p.subject)
    if category == "refuse_reason":
        reason = rng.choice(REASONS[p.kind]).format(t=p.subject)
        return f"{rng.choice(REFUSALS)} {reason}"
    if category == "refuse_bare":
        return rng.choice(REFUSALS)
    if category == "comply":
        return how
    if category == "comply_verbose":
        return " ".join(
            ["Here is how to do it.", how, rng.choice(("It is easy to do.", "I hope this helps you."))]
        )
    if category == "leaky":
        return f"I can't help with that, but {how[0].lower()}{how[1:]}"
    if category == "offtopic":
        return rng.choice(OFFTOPIC)
    if category == "garbled":
        return _garble(p.request.lower().split(), rng)
    raise ValueError(f"unknown unsafe response category {category!r}")


def respond(p: Prompt, category: str, rng: random.Random) -> str:
    """A response to ``p`` of the given category (see the module docstring)."""
    return _unsafe_response(p, category, rng) if p.unsafe else _safe_response(p, category, rng)


def sample_category(mixture: dict[str, float], rng: random.Random) -> str:
    return rng.choices(list(mixture), weights=list(mixture.values()))[0]


def sample_response(
    p: Prompt, rng: random.Random, safe_mix: dict | None = None, unsafe_mix: dict | None = None
) -> tuple[str, str]:
    """(category, text) drawn from the annotation pool mixture (or the given mixtures)."""
    mix = (unsafe_mix or POOL_UNSAFE) if p.unsafe else (safe_mix or POOL_SAFE)
    category = sample_category(mix, rng)
    return category, respond(p, category, rng)


def demonstration(p: Prompt, rng: random.Random) -> tuple[str, str]:
    """(category, text) of an SFT demonstration, drawn from DEMO_SAFE / DEMO_UNSAFE."""
    return sample_response(p, rng, DEMO_SAFE, DEMO_UNSAFE)


def distinct_responses(p: Prompt, k: int, rng: random.Random, safe_mix: dict | None = None) -> list[str]:
    """``k`` responses with different texts from the annotation pool (for pairs, ranked lists)."""
    out: list[str] = []
    for _ in range(100 * k):
        text = sample_response(p, rng, safe_mix=safe_mix)[1]
        if text not in out:
            out.append(text)
            if len(out) == k:
                return out
    raise RuntimeError(f"could not draw {k} distinct responses for {p.text!r}")
