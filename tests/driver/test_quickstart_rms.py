"""The quickstart's first stages as `make demo` runs them: toyworld, SFT, and the helpfulness and
safety reward models, with the quickstart's own settings, reach the accuracies the README states."""
import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = ("toyworld", "sft", "rm_helpfulness", "rm_safety")


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quickstart")
    with open(os.path.join(REPO, "jobs", "toyworld_quickstart.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    cfg["run"]["output_dir"] = str(tmp / "runs")
    cfg["stages"] = [s for s in cfg["stages"] if s["name"] in STAGES]
    assert [s["name"] for s in cfg["stages"]] == list(STAGES)
    path = tmp / "quickstart_rms.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "rayrlhf", "pipeline", "--config", str(path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp / "runs" / cfg["run"]["name"] / "summary.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("rm", ["rm_helpfulness", "rm_safety"])
def test_reward_models_reach_llama2_accuracies(summary, rm):
    s = summary[rm]
    # Held-out accuracy against the noisy labels, and on the pairs labelled "significantly
    # better" (Llama 2 reports 80.7-94.3% there); about 6% of those labels go against the gold
    # order, which caps that level near 94%.
    assert s["eval/accuracy"] >= 0.65
    assert s["eval/accuracy@significantly_better"] >= 0.85
    assert s["eval/pairs@significantly_better"] >= 100
    # Clearly better than preferring the longer (or shorter) response.
    assert s["eval/accuracy"] >= s["eval/length_baseline_accuracy"] + 0.2
    # Accuracy rises with the margin label, as in Llama 2's Table 8.
    levels = ("negligibly_better", "slightly_better", "better", "significantly_better")
    accs = [s[f"eval/accuracy@{lvl}"] for lvl in levels]
    assert accs == sorted(accs)


def test_sft_reports_held_out_perplexity(summary):
    assert 1.0 < summary["sft"]["eval/ppl"] < 1.5
