"""`rayrlhf bench` reduces a run's metrics to its figures: means over measured iterations,
and the share of samples by staleness weighted by each iteration's samples."""
import json

import pytest

from rayrlhf.bench import _ppo_figures


def test_figures_skip_warmup_and_weight_staleness_by_samples(tmp_path):
    rows = [
        # warm-up: left out
        {"timing/step": 9.0, "timing/generate": 9.0, "rollout/samples": 8, "async/staleness@0": 1.0},
        {"timing/step": 2.0, "timing/generate": 1.0, "timing/update": 1.5, "timing/sync": 0.1,
         "rollout/samples": 8, "async/staleness@0": 0.5, "async/staleness@1": 0.5},
        {"timing/step": 4.0, "timing/generate": 3.0, "timing/update": 0.5, "timing/sync": 0.3,
         "rollout/samples": 24, "async/staleness@0": 0.0, "async/staleness@1": 0.5, "async/staleness@2": 0.5},
        {"eval/gold_reward": 0.3},  # not an iteration
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = _ppo_figures(str(tmp_path), warmup=1)
    assert f["step_seconds"] == pytest.approx(3.0)
    assert f["samples_per_s"] == pytest.approx(16 / 3.0)
    assert f["generate_seconds"] == pytest.approx(2.0)
    assert f["train_plus_sync_seconds"] == pytest.approx((1.6 + 0.8) / 2)
    # 32 samples: 4 fresh, 4 + 12 one version old, 12 two versions old.
    assert f["staleness@0"] == pytest.approx(4 / 32)
    assert f["staleness@1"] == pytest.approx(16 / 32)
    assert f["staleness@2"] == pytest.approx(12 / 32)


def test_lora_ratios_are_lora_over_full():
    from rayrlhf.engine.bench_lora import lora_ratios

    full = {"step_seconds": 4.0, "update_peak_bytes": 200, "sync_bytes": 1000.0, "trainable": 10_000}
    lora = {"step_seconds": 3.0, "update_peak_bytes": 50, "sync_bytes": 1000.0, "trainable": 250}
    assert lora_ratios(full, lora) == {"lora/step_over_full": 0.75, "lora/update_peak_over_full": 0.25,
                                       "lora/sync_bytes_over_full": 1.0, "lora/trainable_over_full": 0.025}


def test_a_lora_update_adds_less_memory_than_a_full_one(tiny_tokenizer_dir, tmp_path):
    pytest.importorskip("peft")
    from rayrlhf.engine.bench_lora import measured_update
    from tests.conftest import build_model_dir

    # 6.1M parameters: big enough that the allocator's noise does not hide 12 bytes each.
    model = build_model_dir(tmp_path / "m", tiny_tokenizer_dir, hidden=384, heads=6, layers=4)
    full, lora = measured_update(model, 0), measured_update(model, 8)
    assert lora["trainable"] < full["trainable"] / 10
    # Full: float32 gradients and two AdamW moments of every parameter (12 bytes each) appear
    # in the first update; LoRA's are adapter-sized.
    assert full["update_peak_bytes"] > 8 * full["trainable"]
    assert lora["update_peak_bytes"] < full["update_peak_bytes"]
    print(f"update peak: full {full['update_peak_bytes'] / 2**20:.1f} MiB, lora {lora['update_peak_bytes'] / 2**20:.1f} MiB; "
          f"trainable {full['trainable']} vs {lora['trainable']}")


@pytest.mark.parametrize("fails", [False, True])
def test_bench_removes_its_temporary_folder_and_keeps_a_named_one(tmp_path, monkeypatch, fails):
    import rayrlhf.bench as bench

    made = tmp_path / "rayrlhf-bench-x"

    def mkdtemp(prefix):
        made.mkdir()
        return str(made)

    def parts(tmp, *args, fail=fails):
        with open(f"{tmp}/world.bin", "wb") as f:
            f.write(b"x" * 1000)
        if fail:
            raise RuntimeError("a part failed")
        return {"tmp": tmp}

    monkeypatch.setattr(bench.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(bench, "_bench_in", parts)
    if fails:
        with pytest.raises(RuntimeError, match="a part failed"):
            bench.run_bench(64, 2, 1)
    else:
        assert bench.run_bench(64, 2, 1) == {"tmp": str(made)}
    assert not made.exists()
    kept = tmp_path / "kept"
    monkeypatch.setattr(bench, "_bench_in", lambda tmp, *a: parts(tmp, fail=False))
    assert bench.run_bench(64, 2, 1, keep=str(kept)) == {"tmp": str(kept)}
    assert (kept / "world.bin").exists()
    with pytest.raises(ValueError, match="unknown part"):
        bench.run_bench(64, 2, 1, parts=("nope",))
