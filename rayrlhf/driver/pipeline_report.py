"""The pipeline's closing summary: the figures a user looks for first, one line per stage."""
from __future__ import annotations

import sys


def print_report(results: dict, out=sys.stdout) -> None:
    """The figures a user looks for first, one line each."""
    print("\n== rayrlhf pipeline results ==", file=out)
    for name, s in results.items():
        kind = s.get("kind")
        if kind == "sft":
            print(f"{name:>12}: held-out perplexity {s.get('eval/ppl', float('nan')):.3f} "
                  f"(loss {s.get('eval/loss', float('nan')):.3f}) in {s.get('seconds')} s", file=out)
        elif kind == "rm":
            levels = ", ".join(f"{k.split('@', 1)[1].replace('_', ' ')} {v:.1%}" for k, v in s.items()
                               if k.startswith("eval/accuracy@"))
            print(f"{name:>12}: held-out accuracy {s.get('eval/accuracy', float('nan')):.1%} "
                  f"(vs gold order {s.get('eval/gold_accuracy', float('nan')):.1%}, "
                  f"length baseline {s.get('eval/length_baseline_accuracy', float('nan')):.1%}); "
                  f"per margin level: {levels}", file=out)
        elif kind == "rs":
            hist = s.get("rounds_history", {})
            # The gated gold reward where the run measures it, else its first gold score.
            golds = sorted(k.split("/", 1)[1] for k in s if k.startswith("eval/gold_") and "@" not in k
                           and "_ci_" not in k)
            g = "gold_reward" if "gold_reward" in golds else (golds[0] if golds else "gold_reward")
            kept = " -> ".join(f"{v:.3f}" for v in hist.get("rs/kept_reward", []))
            gold = " -> ".join(f"{v:.3f}" for v in hist.get(f"rs/kept_{g}", []))
            k = s.get("k")
            what = {"dpo": f"online DPO (best vs worst of {k})", "rrhf": f"online RRHF ({k} ranked)"}.get(
                s.get("objective"), f"best-of-{k}")
            gold = f" ({g.replace('_', ' ')} {gold})" if gold else ""
            print(f"{name:>12}: {s.get('rounds')} rounds of {what}; best samples' reward by round "
                  f"{kept}{gold}; held-out {g.replace('_', ' ')} "
                  f"{s.get('before/' + g, float('nan')):.3f} -> {s.get('eval/' + g, float('nan')):.3f}"
                  f"{_alarm(s, 'round')}", file=out)
        elif kind == "label":
            print(f"{name:>12}: {s.get('label/pairs')} pairs labelled by the judge; agreement with the "
                  f"input labels {s.get('label/agreement_input', float('nan')):.1%}, with gold "
                  f"{s.get('label/agreement_gold', float('nan')):.1%} (one order: "
                  f"{s.get('label/agreement_gold_one_order', float('nan')):.1%}); position bias "
                  f"{s.get('label/position_bias', float('nan')):+.3f}", file=out)
        elif kind == "revise":
            print(f"{name:>12}: {s.get('revise/accepted')}/{s.get('revise/items')} responses revised and accepted "
                  f"by the judge in {s.get('revise/mean_rounds') or float('nan'):.2f} rounds on average "
                  f"(at most {s.get('revise/max_rounds')}); {s.get('revise/pairs')} preference pairs", file=out)
        elif kind == "dpo":
            print(f"{name:>12}: held-out reward accuracy {s.get('eval/rewards/accuracies', float('nan')):.1%}, "
                  f"margin {s.get('eval/rewards/margins', float('nan')):.3f} in {s.get('seconds')} s", file=out)
        elif kind == "rrhf":
            print(f"{name:>12}: held-out rank accuracy {s.get('eval/rank_accuracy', float('nan')):.1%}, "
                  f"best-response loss {s.get('eval/sft_loss', float('nan')):.3f} in {s.get('seconds')} s", file=out)
        elif kind == "ppo":
            gains = ", ".join(f"{k.split('/', 1)[1]} {s.get('before/' + k.split('/', 1)[1], float('nan')):.3f} -> "
                              f"{s[k]:.3f}" for k in sorted(s)
                              if (k.startswith("eval/gold") or k == "eval/reward") and "_ci_" not in k)
            alarm = _alarm(s, "iteration")
            print(f"{name:>12}: held-out {gains}; KL to the reference per response "
                  f"{s.get('last/kl/per_response', float('nan')):.3f} after {s.get('steps')} iterations{alarm}",
                  file=out)
    out.flush()


def _alarm(s: dict, unit: str) -> str:
    """The reward-hacking alarm's verdict for a PPO or rejection-sampling stage's summary."""
    if "hacking/fired_at" not in s:
        return ""
    fired = s.get("hacking/fired_at")
    return ("; reward-hacking alarm quiet" if fired is None else f"; REWARD-HACKING ALARM at {unit} {fired}"
            + (" (stopped there)" if s.get("stopped_early_at") else ""))
