"""Telemetry: flat metrics dicts as Ray gauges, scraped back from the node's Prometheus endpoint;
the Grafana dashboard against the names the module emits; the optional W&B logging.

The tests without Ray come first: the module's Ray cluster starts with the first test that
asks for it and stays up until the module ends.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import types
import urllib.request

import numpy as np
import pytest
import torch

from rayrlhf import telemetry
from rayrlhf.config.schema import RunSection
from rayrlhf.metrics import MetricsLogger
from rayrlhf.rollout.types import Sample
from rayrlhf.telemetry import RayMetrics, RolloutMeter, Series, mirror, sanitize, series_for, worker_tags
from rayrlhf.utils.progress import actor_progress
from tests.waiting import wait_for

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "cluster", "grafana", "rayrlhf-dashboard.json")
RUN = "tele-run"


# -- names and mapping, no Ray ---------------------------------------------------------------
def test_sanitize_gives_prometheus_legal_names():
    assert sanitize("rayrlhf_rollout/reward_mean") == "rayrlhf_rollout_reward_mean"
    assert sanitize("rayrlhf_eval/acc@1 (gold)") == "rayrlhf_eval_acc_1_gold"
    assert sanitize("9lives") == "_9lives"
    for name in ("rayrlhf_a/b.c-d", "rayrlhf_x//y", "rayrlhf_é/ü"):
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", sanitize(name)), name


def test_keys_map_to_families_and_plain_gauges():
    assert series_for("reward/helpfulness") == Series("rayrlhf_reward", (("source", "helpfulness"),))
    assert series_for("timing/generate") == Series("rayrlhf_step_seconds", (("phase", "generate"),))
    assert series_for("timing/step") == Series("rayrlhf_step_seconds", (("phase", "step"),))
    assert series_for("actor/pg_loss") == Series("rayrlhf_loss", (("role", "actor"), ("loss", "pg_loss")))
    assert series_for("critic/loss") == Series("rayrlhf_loss", (("role", "critic"), ("loss", "loss")))
    assert series_for("train/loss") == Series("rayrlhf_loss", (("role", "train"), ("loss", "loss")))
    assert series_for("async/queue_depth") == Series("rayrlhf_async_queue_depth")
    assert series_for("async/staleness_mean") == Series("rayrlhf_async_staleness_mean")
    assert series_for("sync/seconds") == Series("rayrlhf_sync_seconds")
    assert series_for("sync/bytes") == Series("rayrlhf_sync_bytes")
    assert series_for("kl/per_response") == Series("rayrlhf_kl_per_response")
    assert series_for("rollout/reward_mean") == Series("rayrlhf_rollout_reward_mean")
    assert series_for("reward") == Series("rayrlhf_reward")  # no source: a plain gauge (skipped when live)


def test_mirror_keeps_finite_numbers_only():
    metrics = {"a/x": 1, "a/y": 2.5, "a/t": torch.tensor(0.5), "a/n": np.float32(0.25), "a/s": "text",
               "a/l": [1, 2], "a/b": True, "a/nan": float("nan"), "a/inf": math.inf, "a/v": torch.ones(2)}
    got = {s.name: v for s, v in mirror(metrics)}
    assert got == {"rayrlhf_a_x": 1.0, "rayrlhf_a_y": 2.5, "rayrlhf_a_t": 0.5, "rayrlhf_a_n": 0.25}


def test_worker_tags_take_the_run_from_the_actor_name():
    assert worker_tags("r1/rollout/3") == {"run": "r1", "worker": "r1/rollout/3"}
    assert worker_tags("r1/reward/safety/0") == {"run": "r1", "worker": "r1/reward/safety/0"}
    assert worker_tags("rollout/0") == {"run": "", "worker": "rollout/0"}
    # a pipeline's stage: the run is <pipeline>/<stage>
    assert worker_tags("quickstart/ppo/rollout/3")["run"] == "quickstart/ppo"
    assert worker_tags("quickstart/ppo/reward/safety/0")["run"] == "quickstart/ppo"


def test_outside_ray_publishing_does_nothing(tmp_path):
    assert not telemetry.ray_active()
    assert RayMetrics("r").publish({"reward/a": 1.0, "timing/step": 2.0}) == 0
    RolloutMeter("r/rollout/0").record(10, 0.5)  # no Ray: returns without creating metrics
    logger = MetricsLogger(str(tmp_path / "r"), tensorboard=False, echo=False)
    logger.log(1, {"train/loss": 1.0})
    logger.close()
    assert logger.run_name == "r"
    assert type(actor_progress(5, enabled=True)).__name__ == "_NoBar"  # Ray's tqdm needs Ray


# -- the Grafana dashboard -----------------------------------------------------------------
def _expressions(dashboard: dict) -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(ray_[a-zA-Z0-9_]+)", expr))


def test_dashboard_draws_every_required_metric_with_emitted_names():
    with open(DASHBOARD, encoding="utf-8") as f:
        dashboard = json.load(f)
    exprs = _expressions(dashboard)
    emitted = telemetry.dashboard_metrics()
    for title, panel_exprs in exprs.items():
        for expr in panel_exprs:
            names = _metric_names(expr)
            assert names and names <= emitted, (title, expr, names - emitted)
            assert 'run=~"$run"' in expr, (title, expr)
    for required, names in telemetry.DASHBOARD.items():
        wanted = {telemetry.prometheus_name(n) for n in names}
        assert any(wanted <= set().union(*map(_metric_names, e)) for e in exprs.values()), required
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert "ray_rayrlhf_" in variables["run"]["definition"] and variables["run"]["definition"].endswith(", run)")
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])


# -- W&B --------------------------------------------------------------------------------------
def test_wandb_is_off_by_default(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # any import of wandb would fail
    logger = MetricsLogger(str(tmp_path / "r"), tensorboard=False, echo=False)
    logger.log(1, {"train/loss": 1.0})
    logger.close()
    assert RunSection().wandb_project is None and RunSection().validate() == []


def test_wandb_configured_but_missing_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(RuntimeError, match="pip install wandb"):
        MetricsLogger(str(tmp_path / "r"), tensorboard=False, echo=False, wandb_project="proj")
    problems = RunSection(wandb_project="proj").validate()
    assert len(problems) == 1 and problems[0].startswith("wandb_project:") and "pip install wandb" in problems[0]


def test_wandb_gets_each_steps_numbers(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, row, step):
            calls.append(("log", row, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = MetricsLogger(str(tmp_path / "r"), tensorboard=False, echo=False, wandb_project="proj")
    logger.log(3, {"train/loss": 0.5, "eval/examples": ["a"], "note": "x"})
    logger.close()
    assert calls == [("init", {"project": "proj", "name": "r", "dir": str(tmp_path / "r"), "config": None,
                               "job_type": None, "entity": None, "group": None}),
                     ("log", {"train/loss": 0.5}, 3), ("finish",)]


# -- a Ray cluster and its Prometheus endpoint -------------------------------------------------
class FakeEngine:
    """Stands in for vLLM/transformers: three tokens per sample."""

    name, version = "fake", 0

    def generate(self, prompt_ids, n=None, seed=None):
        n = n or 1
        return [Sample(i, j, p, [5, 6, 7], [-1.0] * 3, "x", "length", 0)
                for i, p in enumerate(prompt_ids) for j in range(n)]


class FakeEngineWorker:
    """A RolloutWorker actor whose engine is FakeEngine."""

    def __init__(self, name: str):
        import rayrlhf.rollout.worker as worker

        worker.make_backend = lambda *args, **kwargs: FakeEngine()
        self.worker = worker.RolloutWorker("unused", {}, name=name)

    def generate(self, prompt_ids, n):
        return len(self.worker.generate(prompt_ids, n=n))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_port():
    """A local cluster on 127.0.0.1 exporting metrics on a known port, reporting every second."""
    import ray
    from ray._private import ray_constants

    from rayrlhf.utils.ray_init import SINGLE_NODE_ENV, bind_to_loopback

    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="rtm", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    with pytest.MonkeyPatch.context() as mp:
        # Undone after the module: the loopback switch holds for the whole process.
        mp.delenv(SINGLE_NODE_ENV, raising=False)
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)
        bind_to_loopback()
        # The emitters' report interval (floored at 1 s by Ray) instead of 10 s.
        ray.init(num_cpus=2, include_dashboard=False, _metrics_export_port=port, _temp_dir=tmp,
                 _system_config={"metrics_report_interval_ms": 200}, logging_level="ERROR", log_to_driver=False)
        try:
            yield port
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


def scrape(port: int) -> dict[str, list[tuple[dict, float]]]:
    """Sample name -> [(labels, value)] of the rayrlhf metrics on the node's endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("ray_rayrlhf_"):
                out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def one(samples: dict, name: str, **labels) -> float:
    found = [v for ls, v in samples.get(name, []) if all(ls.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_driver_and_actor_metrics_reach_prometheus(metrics_port, tmp_path):
    import ray

    logger = MetricsLogger(str(tmp_path / RUN), tensorboard=False, echo=False)
    logger.log(1, {"reward/helpfulness": 0.25, "reward/safety": -0.5, "timing/generate": 1.5,
                   "actor/pg_loss": -0.125, "critic/loss": 0.75, "async/queue_depth": 2,
                   "sync/bytes": 1024, "kl/per_response": 0.0625, "note": "not a number"})
    actor = ray.remote(num_cpus=0)(FakeEngineWorker).remote(f"{RUN}/rollout/0")
    assert ray.get(actor.generate.remote([[1, 2], [3]], 2)) == 4  # 4 samples x 3 tokens

    expected = {"ray_rayrlhf_reward", "ray_rayrlhf_step_seconds", "ray_rayrlhf_loss", "ray_rayrlhf_async_queue_depth",
                "ray_rayrlhf_sync_bytes", "ray_rayrlhf_kl_per_response", "ray_rayrlhf_rollout_tokens_per_second",
                "ray_rayrlhf_rollout_generated_tokens_total"}
    samples = wait_for(lambda: (s := scrape(metrics_port)) and expected <= set(s) and s, 60,
                       f"{sorted(expected)} on the metrics endpoint", every=0.2)

    assert one(samples, "ray_rayrlhf_reward", run=RUN, source="helpfulness") == 0.25
    assert one(samples, "ray_rayrlhf_reward", run=RUN, source="safety") == -0.5
    assert one(samples, "ray_rayrlhf_step_seconds", run=RUN, phase="generate") == 1.5
    assert one(samples, "ray_rayrlhf_loss", run=RUN, role="actor", loss="pg_loss") == -0.125
    assert one(samples, "ray_rayrlhf_loss", run=RUN, role="critic", loss="loss") == 0.75
    assert one(samples, "ray_rayrlhf_async_queue_depth", run=RUN) == 2
    assert one(samples, "ray_rayrlhf_sync_bytes", run=RUN) == 1024
    assert one(samples, "ray_rayrlhf_kl_per_response", run=RUN) == 0.0625
    worker = {"run": RUN, "worker": f"{RUN}/rollout/0"}
    assert one(samples, "ray_rayrlhf_rollout_generated_tokens_total", **worker) == 12
    assert one(samples, "ray_rayrlhf_rollout_tokens_per_second", **worker) > 0
    assert not any("note" in name for name in samples)
    assert set(samples) <= telemetry.dashboard_metrics()  # what the dashboard queries is what Ray exports
    logger.close()


def test_a_loop_inside_an_actor_reports_progress_through_rays_tqdm(metrics_port):
    import ray

    @ray.remote(num_cpus=0)
    def loop(enabled: bool) -> str:
        bar = actor_progress(total=3, initial=1, desc="sft", enabled=enabled)
        for _ in range(2):
            bar.update(1, {"train/loss": 0.5})
        bar.close()
        return type(bar).__name__ + ("" if not enabled else f" {bar.bar.n}/{bar.bar.total}")

    assert ray.get([loop.remote(True), loop.remote(False)]) == ["_ActorBar 3/3", "_NoBar"]
