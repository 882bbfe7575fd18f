"""The memory plan: parameter counts, hand-computed bytes, the plan CLI on real model sizes, a
measured CPU training step, and every recipe in jobs/ planning clean."""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from rayrlhf.config.loader import ConfigError, load_config
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.engine.memory import check_memory, format_memory, plan_memory, read_model_config
from rayrlhf.engine.memory_model import (ModelShape, TrainSetup, activation_bytes, layer_activation_bytes,
                                         trained_bytes)
from rayrlhf.placement.cli import plan_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- parameter counts ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, extra", [
    ("llama", dict(tie_word_embeddings=False)),
    ("llama", dict(tie_word_embeddings=True, num_key_value_heads=2, attention_bias=True, mlp_bias=True)),
    ("qwen2", dict(tie_word_embeddings=True, num_key_value_heads=2)),
    ("qwen2", dict(tie_word_embeddings=False, head_dim=48)),
])
def test_parameter_count_is_exact_against_transformers(kind, extra):
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig,
                              Qwen2Config)

    cls = LlamaConfig if kind == "llama" else Qwen2Config
    config = cls(vocab_size=300, hidden_size=128, intermediate_size=200, num_hidden_layers=2,
                 num_attention_heads=4, **extra)
    shape = ModelShape.from_config(config.to_dict())
    lm = AutoModelForCausalLM.from_config(config)
    assert shape.lm_params() == sum(p.numel() for p in lm.parameters())
    config.num_labels = 1
    scalar = AutoModelForSequenceClassification.from_config(config)
    assert shape.scalar_params() == sum(p.numel() for p in scalar.parameters())


@pytest.mark.parametrize("name, total", [("meta-llama/Llama-2-7b-hf", 6_738_415_616),
                                         ("Qwen/Qwen2.5-0.5B", 494_032_768),
                                         ("Qwen/Qwen2.5-1.5B", 1_543_714_304)])
def test_known_totals_from_the_bundled_configs(name, total):
    assert ModelShape.from_config(read_model_config(name, "policy.name_or_path")).lm_params() == total


def test_an_unknown_hub_name_names_the_key_and_says_what_to_do():
    with pytest.raises(ConfigError) as e:
        read_model_config("some-org/not-a-model", "policy.name_or_path")
    msg = str(e.value)
    assert "policy.name_or_path" in msg and "config.json" in msg and "local folder" in msg


# -- hand-computed bytes ---------------------------------------------------------------------------

# V=100, h=16, I=32, 4 layers, 2 heads of 8, untied. Per layer: q,k,v,o 4*16*16 = 1024, MLP
# 3*16*32 = 1536, norms 32 -> 2592. P = 1600 (embed) + 1600 (head) + 4*2592 + 16 = 13584.
SMALL = ModelShape(vocab_size=100, hidden_size=16, intermediate_size=32, num_layers=4, num_heads=2,
                   num_kv_heads=2, head_dim=8)


def test_small_model_bytes_by_hand():
    assert SMALL.layer_params() == 2592 and SMALL.lm_params() == 13584
    # Activations per token per layer in float32: norms 2*(4+2*4)*16 = 384, attention
    # 5*4*16 + 4*2 = 328, MLP 4*4*32 = 512 -> 1224; 16 tokens -> 19584.
    assert layer_activation_bytes(SMALL, 16, 4) == 19584
    acts = activation_bytes(SMALL, 16, 4, lm_head=True)
    head = 12 * 16 * 16 + 16 * 100 * 8  # final norm + float32 logits and one log-softmax copy
    assert acts.full == 4 * 19584 + head == 94208
    assert acts.checkpointed == 4 * 4 * 16 * 16 + 19584 + head == 39552

    p = 13584
    one = trained_bytes(SMALL, TrainSetup(), acts)  # ddp, one worker (not wrapped: no buckets)
    assert (one.weights, one.grads, one.optimizer) == (4 * p, 4 * p, 8 * p)
    ddp = trained_bytes(SMALL, TrainSetup(dtype="bfloat16", workers=2), acts)
    assert (ddp.weights, ddp.grads, ddp.optimizer) == (4 * p + 2 * p, 8 * p, 8 * p)  # autocast copy, buckets

    fsdp = trained_bytes(SMALL, TrainSetup(strategy="fsdp", workers=2), acts)
    shard, root = p // 2, 1600 + 1600 + 16
    gathered = 4 * (2 * 2592 + root)  # two layers and the root unit, float32
    assert fsdp.weights == 4 * shard + gathered == 27168 + 33600
    assert fsdp.grads == 4 * shard + 4 * (2592 + root)
    assert fsdp.optimizer == 8 * shard and fsdp.host == 0

    off = trained_bytes(SMALL, TrainSetup(strategy="fsdp", workers=2, cpu_offload=True), acts)
    assert off.host == 16 * shard
    assert (off.weights, off.grads, off.optimizer) == (gathered, 4 * (2592 + root), 0)


# -- the plan CLI on Llama 2 ---------------------------------------------------------------------

def ppo_yaml(tmp_path, model: str, resources: dict, **sections) -> str:
    cfg = {"policy": {"name_or_path": model, "dtype": "bfloat16", "gradient_checkpointing": True},
           "data": {"train": ["/data/prompts.jsonl"], "max_prompt_tokens": 512},
           "rewards": [{"name": "brevity", "function": "rayrlhf.rules:length_penalty"}],
           "rollout": {"dtype": "bfloat16", "max_new_tokens": 512, "max_model_len": 1024},
           "ppo": {"per_worker_micro_batch_size": 2, "forward_micro_batch_size": 8,
                   "global_mini_batch_size": 64, "prompts_per_step": 64},
           "resources": {"gpu_memory_gib": 80, **resources}}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


EIGHT_DDP = {"trainer": {"num_workers": 8, "gpus_per_worker": 1},
             "critic": {"num_workers": 8, "gpus_per_worker": 1},
             "rollout": {"num_workers": 1, "gpus_per_worker": 1},
             "reference": {"num_workers": 1, "gpus_per_worker": 1}}


def test_llama2_7b_ddp_is_refused_with_fsdp_suggested_and_fsdp_fits(tmp_path, capsys):
    path = ppo_yaml(tmp_path, "meta-llama/Llama-2-7b-hf", EIGHT_DDP, rollout={"gpu_memory_utilization": 0.9})
    assert plan_main(["--no-cluster", "--config", path]) == 1
    out = capsys.readouterr().out
    trainer = next(line for line in out.splitlines() if line.startswith("problem: resources.trainer / policy"))
    needs = float(re.search(r"needs ([\d.]+) GiB per GPU", trainer).group(1))
    assert 100 < needs < 160  # 16 bytes/parameter of fp32 AdamW state alone is 100 GiB
    assert "80.0 GiB" in trainer and "fits with: policy.strategy: fsdp" in trainer
    assert "problem: resources.critic / critic" in out

    assert plan_main(["--no-cluster", "--config", path, "policy.strategy=fsdp", "critic.strategy=fsdp"]) == 0
    out = capsys.readouterr().out
    assert "memory: every GPU role fits" in out and "trainer/7" in out


def test_llama2_70b_fsdp_over_8_gpus_needs_offload(tmp_path, capsys):
    cpu = {"gpus_per_worker": 0}
    path = ppo_yaml(tmp_path, "meta-llama/Llama-2-70b-hf",
                    {"trainer": {"num_workers": 8, "gpus_per_worker": 1}, "critic": cpu, "rollout": cpu,
                     "reference": cpu}, policy={"strategy": "fsdp"})
    assert plan_main(["--no-cluster", "--config", path]) == 1
    out = capsys.readouterr().out
    trainer = next(line for line in out.splitlines() if line.startswith("problem: resources.trainer / policy"))
    assert "policy.cpu_offload: true" in trainer
    # CPU roles get an estimate and are never refused.
    assert not any(line.startswith(("problem: resources.critic", "problem: resources.rollout"))
                   for line in out.splitlines())
    assert plan_main(["--no-cluster", "--config", path, "policy.cpu_offload=true"]) == 0
    assert "of host memory per worker (cpu_offload)" in capsys.readouterr().out


def test_rollout_tensor_parallel_halves_its_weights_per_gpu(tmp_path):
    res = {"trainer": {"gpus_per_worker": 0}, "critic": {"gpus_per_worker": 0}, "reference": {"gpus_per_worker": 0}}
    path = ppo_yaml(tmp_path, "meta-llama/Llama-2-13b-hf", {**res, "rollout": {"gpus_per_worker": 1}})
    one = plan_memory("ppo", load_config(PPOConfig, path))
    two = plan_memory("ppo", load_config(PPOConfig, path, ["rollout.tensor_parallel_size=2",
                                                           "resources.rollout.gpus_per_worker=2"]))
    (r1,) = [r for r in one.rows if r.role == "rollout"]
    r2 = [r for r in two.rows if r.role == "rollout"]
    assert [r.gpu for r in r2] == [0, 1]
    assert all(abs(r.weights - r1.weights / 2) <= 1 for r in r2)
    assert all(r.kv_cache > r1.kv_cache for r in r2)


def test_colocated_roles_sum_on_their_gpu_and_check_memory_raises(tmp_path):
    res = {"trainer": {"num_workers": 2, "gpus_per_worker": 0.5},
           "critic": {"num_workers": 2, "gpus_per_worker": 0.5, "colocate_with": "trainer"},
           "reference": {"gpus_per_worker": 0}, "rollout": {"gpus_per_worker": 0}}
    path = ppo_yaml(tmp_path, "Qwen/Qwen2.5-7B", res, policy={"strategy": "fsdp"}, critic={"strategy": "fsdp"})
    cfg = load_config(PPOConfig, path)
    plan = plan_memory("ppo", cfg)
    on0 = [r for r in plan.rows if r.gpu == 0]
    assert {r.role for r in on0} == {"trainer", "critic"}
    assert all(r.gpu_total == sum(x.total for x in on0) for r in on0)
    assert "shared GPU 0" in format_memory(plan)
    with pytest.raises(ConfigError) as e:
        check_memory("ppo", load_config(PPOConfig, path, ["resources.gpu_memory_gib=24"]))
    assert "resources.trainer / policy" in str(e.value)
    check_memory("ppo", load_config(PPOConfig, path, ["resources.trainer.gpus_per_worker=0",
                                                      "resources.critic.gpus_per_worker=0"]))  # CPU: no check


# -- measured on CPU: one SFT-style step ----------------------------------------------------------

MEASURE = r"""
import gc, json, sys, torch
torch.set_num_threads(1)
from transformers import LlamaConfig, LlamaForCausalLM
from rayrlhf.algo.losses import sft_loss

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def run(h, layers, vocab, heads, b=4, s=128):
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=h * 8 // 3 // 16 * 16,
                      num_hidden_layers=layers, num_attention_heads=heads, tie_word_embeddings=False,
                      max_position_embeddings=s, attn_implementation="sdpa")
    ids = torch.randint(0, vocab, (b, s))
    mask = torch.ones_like(ids)
    mask[0, s - 28:] = 0  # padding, as the engine's batches have
    gc.collect()
    base = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM (the peak RSS) to now
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)  # as rayrlhf/trainer/optim.py
    # Two steps; gradients are zeroed in place, as gradient accumulation keeps them, so the second
    # step holds weights, gradients, AdamW state and activations at once.
    for _ in range(2):
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss, _ = sft_loss(logits.float(), ids, mask)
        loss.backward()
        del logits, loss
        opt.step()
        opt.zero_grad(set_to_none=False)
    peak = status("VmHWM") - base
    return {"config": cfg.to_dict(), "tokens": b * s, "peak": peak}

run(64, 1, 100, 2)  # lazily initialised kernels and thread pools, before any baseline
print(json.dumps([run(*size) for size in json.loads(sys.argv[1])]))
"""


def test_estimate_matches_a_measured_cpu_training_step():
    sizes = [[256, 2, 2000, 4], [512, 3, 4000, 8], [768, 4, 8000, 12]]
    # Large blocks are mmapped and handed back on free, so the peak RSS follows the live tensors.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(sizes)], capture_output=True, text=True,
                         env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    for r in json.loads(out.stdout.strip().splitlines()[-1]):
        shape = ModelShape.from_config(r["config"])
        acts = activation_bytes(shape, r["tokens"], 4, lm_head=True)
        b = trained_bytes(shape, TrainSetup(), acts)
        estimate = b.weights + b.grads + b.optimizer + b.activations
        print(f"h={shape.hidden_size} L={shape.num_layers} V={shape.vocab_size}: estimate "
              f"{estimate / 2**20:.1f} MiB, measured {r['peak'] / 2**20:.1f} MiB")
        assert abs(estimate - r["peak"]) <= 0.25 * r["peak"]


# -- every recipe in jobs/ -------------------------------------------------------------------------

RECIPES = sorted(p for p in glob.glob(os.path.join(ROOT, "jobs", "*.yaml")) if not p.endswith("runtime_env.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_every_recipe_loads_and_its_memory_plan_fits(path, capsys):
    from rayrlhf.config.commands import config_class
    from rayrlhf.driver.pipeline import load_pipeline
    from rayrlhf.placement.cli import FLEET_COMMANDS, detect_command

    with open(path) as f:
        raw = yaml.safe_load(f)
    command = detect_command(raw)
    if command in ("pipeline", "compare"):
        from rayrlhf.driver.compare import load_compare

        # every stage's config, loaded and validated
        configs = load_pipeline(path, [])[2] if command == "pipeline" else load_compare(path)[3]
        assert configs
    else:
        load_config(config_class(command), path)
    assert plan_main(["--no-cluster", "--config", path]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert ("rollout fleet of" if command in FLEET_COMMANDS else "memory plan") in out and "problem:" not in out


def test_a_rollout_whose_weights_do_not_fit_its_budget_gets_tensor_parallel_fixes(tmp_path):
    cpu = {"gpus_per_worker": 0}
    path = ppo_yaml(tmp_path, "meta-llama/Llama-2-70b-hf", {"trainer": cpu, "critic": cpu, "reference": cpu,
                                                              "rollout": {"gpus_per_worker": 1}})
    plan = plan_memory("ppo", load_config(PPOConfig, path))
    (problem,) = plan.problems()
    assert problem.startswith("resources.rollout / rollout") and "do not fit in rollout.gpu_memory_utilization 0.5" in problem
    assert "rollout.tensor_parallel_size: 4 + resources.rollout.gpus_per_worker: 4" in problem
    short = plan_memory("ppo", load_config(PPOConfig, path, ["rollout.gpu_memory_utilization=0.95",
                                                             "rollout.tensor_parallel_size=2",
                                                             "resources.rollout.gpus_per_worker=2",
                                                             "rollout.max_model_len=200000"]))
    assert "fewer than one rollout.max_model_len (200000) sequence" in short.problems()[0]


def test_ppo_and_sft_stop_before_ray_when_a_role_cannot_fit(tmp_path, monkeypatch, capsys):
    """The stage commands run the memory plan first: nothing of Ray starts for a plan that fails."""
    import rayrlhf.utils.ray_init as ray_init
    from rayrlhf.cli import main

    def no_ray(*a, **k):
        raise AssertionError("Ray was started although the memory plan fails")

    monkeypatch.setattr(ray_init, "ensure_ray", no_ray)
    path = ppo_yaml(tmp_path, "meta-llama/Llama-2-7b-hf", EIGHT_DDP, rollout={"gpu_memory_utilization": 0.9},
                    run={"output_dir": str(tmp_path / "runs")})
    assert main(["ppo", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "resources.trainer / policy" in err and "policy.strategy: fsdp" in err
    sft = tmp_path / "sft.yaml"
    sft.write_text(yaml.safe_dump({
        "model": {"name_or_path": "meta-llama/Llama-2-7b-hf", "dtype": "bfloat16"},
        "data": {"train": [str(tmp_path / "missing.jsonl")]},
        "scaling": {"num_workers": 8, "use_gpu": True}, "run": {"output_dir": str(tmp_path / "runs")}}))
    assert main(["sft", "--config", str(sft)]) == 2
    err = capsys.readouterr().err
    assert "model.strategy: fsdp" in err or "strategy: fsdp" in err


# -- LoRA ------------------------------------------------------------------------------------------

def test_lora_bytes_by_hand():
    shape = ModelShape(vocab_size=1000, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                       num_kv_heads=1, head_dim=32)
    # q: 64->64, k, v: 64->32, o: 64->64, gate, up: 64->128, down: 128->64; rank 8 -> 8 x (in + out).
    per_layer = 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64))
    assert shape.lora_params(8, ["all-linear"]) == 2 * per_layer
    assert shape.lora_params(8, ["q_proj", "v_proj"]) == 2 * 8 * ((64 + 64) + (64 + 32))
    acts = activation_bytes(shape, 0, 2, True)
    b = trained_bytes(shape, TrainSetup(dtype="bfloat16", lora_r=8), acts)
    # The base in bf16 (2 bytes), the adapters in float32 with their gradients and AdamW state.
    assert b.weights == 2 * shape.lm_params() + 4 * 2 * per_layer
    assert b.grads == 4 * 2 * per_layer and b.optimizer == 8 * 2 * per_layer


def test_llama2_70b_lora_fits_8_gpus_without_offload_and_needs_no_reference(tmp_path, capsys):
    cpu = {"gpus_per_worker": 0}
    path = ppo_yaml(tmp_path, "meta-llama/Llama-2-70b-hf",
                    {"trainer": {"num_workers": 8, "gpus_per_worker": 1}, "critic": cpu, "rollout": cpu,
                     "reference": cpu}, policy={"strategy": "fsdp", "lora": {"r": 16}})
    cfg = load_config(PPOConfig, path)
    assert cfg.reference_from_policy
    plan = plan_memory("ppo", cfg)
    assert "reference" not in plan.roles()
    assert plan_main(["--no-cluster", "--config", path]) == 0, capsys.readouterr().out
    full = plan_memory("ppo", load_config(PPOConfig, path, ["policy.lora.r=0"]))
    assert "reference" in full.roles()
    lora_row = next(r for r in plan.rows if r.role == "trainer")
    full_row = next(r for r in full.rows if r.role == "trainer")
    # AdamW state of 70B parameters over 8 GPUs (70 GiB each) against that of the adapters.
    assert full_row.optimizer / lora_row.optimizer > 100
    # A reference model of its own on another folder is still planned and started.
    other = load_config(PPOConfig, path, ["reference.name_or_path=meta-llama/Llama-2-13b-hf"])
    assert not other.reference_from_policy and "reference" in plan_memory("ppo", other).roles()


# -- quantised base weights -----------------------------------------------------------------------

def test_quantized_base_bytes_by_hand():
    from rayrlhf.engine.memory_model import frozen_bytes

    shape = ModelShape(vocab_size=1000, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                       num_kv_heads=1, head_dim=32)
    # Linear weights per layer: q, o 4,096; k, v 2,048; gate, up, down 8,192: 36,864, so 73,728
    # of the 202,048 parameters; the other 128,320 (embeddings, head, norms) are not quantised.
    assert shape.lm_params() == 202_048
    # 8bit: a byte per weight + a float32 scale per output row (q, o 64; k, v 32; gate, up 128;
    # down 64): 36,864 + 4 x 512 = 38,912 per layer.
    assert frozen_bytes(shape, "bfloat16", True, 0, "8bit").weights == 2 * 38_912 + 2 * 128_320
    # 4bit: n/2 + n/64 (uint8 absmax) + 4 per 256 blocks + 1,092 per tensor (the 256-entry
    # float32 code, offset, 16 NF4 levels): q, o 3,208; k, v 2,152; gate, up, down 5,320.
    per_layer = 2 * 3_208 + 2 * 2_152 + 3 * 5_320
    assert per_layer == 26_680
    assert frozen_bytes(shape, "bfloat16", True, 0, "4bit").weights == 2 * per_layer + 2 * 128_320
    # Trained (QLoRA): the unquantised rest in float32, the r=8 adapters (16,384) in float32.
    acts = activation_bytes(shape, 0, 2, True)
    b = trained_bytes(shape, TrainSetup(dtype="bfloat16", lora_r=8, quantization="4bit"), acts)
    assert b.weights == 2 * per_layer + 4 * 128_320 + 4 * 16_384


def test_llama2_70b_in_4bit_is_a_quarter_of_bf16():
    from rayrlhf.engine.memory import read_model_config
    from rayrlhf.engine.memory_model import frozen_bytes

    shape = ModelShape.from_config(read_model_config("meta-llama/Llama-2-70b-hf", "policy.name_or_path"))
    bf16 = frozen_bytes(shape, "bfloat16", True, 0).weights
    nf4 = frozen_bytes(shape, "bfloat16", True, 0, "4bit").weights
    int8 = frozen_bytes(shape, "bfloat16", True, 0, "8bit").weights
    # 68.98B parameters, 68.45B of them in linear layers: 128.5 GiB in bf16; NF4 at 4.127 bits
    # a weight (0.5 + 1/64 + 4/16,384 bytes) keeps 32.9 GiB of those, plus 1 GiB of embeddings
    # and head in bf16.
    assert round(bf16 / 2**30, 1) == 128.5
    assert round(nf4 / 2**30, 1) == 33.9
    assert round(int8 / 2**30, 1) == 64.8  # 8.0 bits a weight (row scales are 0.0005 bit)


def test_a_judge_reward_counts_its_whole_prompt_and_grows_with_its_template(tmp_path, tiny_model_dir):
    cpu = {"gpus_per_worker": 0}
    acts = []
    for words in (10, 400):
        template = tmp_path / f"judge_{words}.yaml"
        template.write_text(yaml.safe_dump({"kind": "direct", "preamble": "Rate the response. " * words}))
        path = ppo_yaml(tmp_path, tiny_model_dir, {"trainer": cpu, "critic": cpu, "rollout": cpu, "reference": cpu,
                                                    "rewards": {"judge": cpu}},
                        policy={"dtype": "float32", "gradient_checkpointing": False}, rollout={"dtype": "float32"})
        cfg = load_config(PPOConfig, path, [f"rewards=[{{name: judge, model: {tiny_model_dir}, judge: {template}}}]"])
        (row,) = [r for r in plan_memory("ppo", cfg).rows if r.role == "reward/judge"]
        acts.append(row.activations)
    scalar = load_config(PPOConfig, path, [f"rewards=[{{name: judge, model: {tiny_model_dir}}}]"])
    (rm,) = [r for r in plan_memory("ppo", scalar).rows if r.role == "reward/judge"]
    assert rm.activations < acts[0] < acts[1]
