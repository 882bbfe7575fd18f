"""docs/your-own-run.md, run as a reader would: every ```bash block, in order, in one project
folder, on toyworld-sized stand-ins (a tiny model in $MODEL, small files in data/ written in
the formats the guide describes, a throwaway token-protected head for the cluster section)."""
import json
import os
import re
import shutil
import subprocess

import pytest

from tests.test_jobs import REPO, clean_env, head  # noqa: F401  (head: the module's Ray head fixture)

GUIDE = os.path.join(REPO, "docs", "your-own-run.md")
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def guide_blocks() -> list[str]:
    with open(GUIDE) as f:
        return BLOCK.findall(f.read())


def guide_world(out) -> str:
    """Toyworld data and a one-layer base model whose context (1024 positions) holds the guide's
    max_model_len, as a real model's does."""
    from rayrlhf.driver.toyworld_stage import ToyworldConfig, run_toyworld
    from rayrlhf.models.tiny import TinyModelSpec

    run_toyworld(ToyworldConfig(out=str(out), n_sft=40, n_pref=40, n_prompts=16, n_eval_prompts=8, vocab_size=300,
                                model=TinyModelSpec(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128,
                                                    max_position_embeddings=1024)))
    return str(out)


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _write(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_stand_ins(world: str, data: str) -> None:
    """The guide's data/ files from toyworld's: demonstrations as ShareGPT and as Alpaca, pairs
    under other column names, prompts."""
    os.makedirs(data)
    sft = _rows(os.path.join(world, "data", "sft_train.jsonl"))
    half = len(sft) // 2
    roles = {"user": "human", "assistant": "gpt"}
    _write(os.path.join(data, "chat.jsonl"), [
        {"conversations": [{"from": roles[m["role"]], "value": m["content"]} for m in r["messages"]]}
        for r in sft[:half]])
    _write(os.path.join(data, "instructions.jsonl"), [
        {"instruction": r["messages"][0]["content"], "input": "", "output": r["messages"][1]["content"]}
        for r in sft[half:]])
    prefs = _rows(os.path.join(world, "data", "pref_helpfulness_train.jsonl"))
    _write(os.path.join(data, "prefs.jsonl"), [
        {"question": r["prompt"][0]["content"], "better": r["chosen"][0]["content"],
         "worse": r["rejected"][0]["content"]} for r in prefs])
    for ours, theirs in (("prompts.jsonl", "prompts_train.jsonl"), ("prompts_eval.jsonl", "prompts_eval.jsonl")):
        _write(os.path.join(data, ours), [{"prompt": r["prompt"][0]["content"]}
                                          for r in _rows(os.path.join(world, "data", theirs))])


def test_the_guide_has_the_blocks_this_test_reads():
    blocks = guide_blocks()
    assert len(blocks) >= 8 and any("rayrlhf pipeline" in b for b in blocks)
    assert any("rayrlhf submit" in b for b in blocks)


@pytest.mark.slow
def test_every_command_of_the_guide_runs(tmp_path, head):  # noqa: F811
    world = guide_world(tmp_path / "world")
    project = tmp_path / "project"
    shutil.copytree(os.path.join(REPO, "jobs"), project / "jobs")
    write_stand_ins(world, str(project / "data"))
    script = "set -euo pipefail\n" + "\n".join(guide_blocks())
    env = clean_env(MODEL=os.path.join(world, "base_model"), DASHBOARD=head["address"],
                    RAY_AUTH_TOKEN_PATH=head["token_file"], RAYRLHF_NAMESPACE=f"guide-{os.getpid()}")
    done = subprocess.run(["bash", "-c", script], cwd=project, env=env, capture_output=True, text=True,
                          timeout=1500, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    run = project / "runs" / "smoke"
    for stage in ("sft", "rm", "rs", "ppo"):
        assert (run / stage / "export" / "model.safetensors").exists(), stage
    summary = json.load(open(run / "summary.json"))
    assert summary["ppo"]["steps"] == 2 and summary["rs"]["rounds"] == 1
    assert (run / "report" / "index.html").exists()
    # The validation read every stand-in: 0 problems in each of the five files.
    assert out.count(" records, 0 problems") == 5, out[-6000:]
    # The submitted job found every stage done.
    assert re.search(r"submitted job \S+", out), out[-6000:]
