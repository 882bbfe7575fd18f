"""The chaos suite's count: faults injected, runs that survived them, runs that stopped with a
clear error (what failed, which checkpoint is intact, how to resume) and then resumed."""
import os
import random

SEED = int(os.environ.get("RAYRLHF_CHAOS_SEED", "1204"))
COUNTS = {"injected": 0, "survived": 0, "failed clearly": 0}


def pick(case: str, low: int, high: int) -> int:
    """The call (or step) in [low, high] at which ``case``'s fault fires, fixed by the seed."""
    return random.Random(f"{SEED}:{case}").randint(low, high)


def injected() -> None:
    COUNTS["injected"] += 1


def survived() -> None:
    COUNTS["survived"] += 1


def failed_clearly() -> None:
    COUNTS["failed clearly"] += 1


def line() -> str:
    c = COUNTS
    return f"chaos: survived {c['survived']} / injected {c['injected']} (failed clearly: {c['failed clearly']})"
