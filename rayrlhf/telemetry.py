"""Training metrics in the Ray dashboard and Prometheus, through ``ray.util.metrics``.

Every stage logs one flat dict of namespaced metrics per step (``rayrlhf.metrics``);
``RayMetrics.publish`` mirrors it into Ray gauges, one gauge per metric family, each tagged
with the run's name (``run``). Ray serves them from every node's metrics endpoint
(``http://<node>:<metrics_export_port>/metrics``) under its own prefix ``ray_``, so the gauge
``rayrlhf_reward`` is scraped as ``ray_rayrlhf_reward``, with Ray's labels (node, session,
process) next to ours.

Flat key -> gauge {tags besides ``run``}:

============================================  ==============================  ===============
key                                           gauge                           tags
============================================  ==============================  ===============
``reward/<source>``                           ``rayrlhf_reward``              ``source``
``timing/<phase>`` (``timing/step``: total)   ``rayrlhf_step_seconds``        ``phase``
``<role>/loss``, ``<role>/<name>_loss``       ``rayrlhf_loss``                ``role``, ``loss``
any other key, e.g. ``async/queue_depth``     ``rayrlhf_async_queue_depth``   (none)
============================================  ==============================  ===============

So ``actor/pg_loss`` is ``rayrlhf_loss{role="actor", loss="pg_loss"}``, ``critic/loss`` is
``rayrlhf_loss{role="critic", loss="loss"}``, and ``async/staleness_mean``, ``sync/seconds``,
``sync/bytes``, ``kl/per_response`` and ``rollout/reward_mean`` become
``rayrlhf_async_staleness_mean``, ``rayrlhf_sync_seconds``, ``rayrlhf_sync_bytes``,
``rayrlhf_kl_per_response`` and ``rayrlhf_rollout_reward_mean``. Only finite numbers are
published; strings, lists, booleans and NaN are left to the metrics file.

Each rollout worker also reports from inside its actor, once per ``generate`` call, tagged
``run`` and ``worker`` (the actor's name, ``<run>/rollout/<rank>``):

- ``rayrlhf_rollout_tokens_per_second``: tokens generated / seconds of that call (gauge);
- ``rayrlhf_rollout_generated_tokens``: tokens generated so far (counter, scraped with
  Prometheus' ``_total`` suffix).

Outside Ray (one process, unit tests) publishing does nothing. Ray keeps a gauge's last value
in the export for two report intervals after it was set (20 s by default); the Grafana
dashboard (``cluster/grafana/rayrlhf-dashboard.json``) bridges the gaps between longer steps.
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass

PREFIX = "rayrlhf_"
RAY_PREFIX = "ray_"
"""Ray's namespace for application metrics in its Prometheus export."""

FAMILIES = {"reward": ("rayrlhf_reward", "source"), "timing": ("rayrlhf_step_seconds", "phase")}
"""Key prefix -> (gauge, tag holding the rest of the key)."""
LOSS = "rayrlhf_loss"
TOKENS_PER_SECOND = "rayrlhf_rollout_tokens_per_second"
GENERATED_TOKENS = "rayrlhf_rollout_generated_tokens"
COUNTERS = (GENERATED_TOKENS,)


@dataclass(frozen=True)
class Series:
    """One gauge and the tags (besides ``run``) that a flat key sets on it."""

    name: str
    tags: tuple[tuple[str, str], ...] = ()


def sanitize(name: str) -> str:
    """A Prometheus-legal metric name: runs of anything but letters, digits and ``_`` become
    one ``_``; a leading digit gets a ``_`` in front."""
    out = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    return f"_{out}" if out[:1].isdigit() else out


def series_for(key: str) -> Series:
    """The gauge and tags of a flat namespaced key (the table in the module docstring)."""
    head, _, rest = key.partition("/")
    if rest and head in FAMILIES:
        name, tag = FAMILIES[head]
        return Series(name, ((tag, rest),))
    if rest and "/" not in rest and (rest == "loss" or rest.endswith("_loss")):
        return Series(LOSS, (("role", head), ("loss", rest)))
    return Series(sanitize(PREFIX + key))


def as_number(value) -> float | None:
    """``value`` as a float when it is a finite number (tensors and numpy scalars included)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def mirror(metrics: dict) -> list[tuple[Series, float]]:
    """The (series, value) pairs a flat metrics dict publishes; non-numbers are skipped."""
    out = []
    for key, value in metrics.items():
        number = as_number(value)
        if number is not None:
            out.append((series_for(key), number))
    return out


def worker_tags(name: str) -> dict[str, str]:
    """Tags of an actor named ``<run>/<role>/<rank>`` (``<run>/reward/<source>/<rank>``), where
    the run's own name may hold a slash (``<pipeline>/<stage>``)."""
    parts = name.split("/")
    role_at = -3 if len(parts) >= 4 and parts[-3] == "reward" else -2
    return {"run": "/".join(parts[:role_at]) if len(parts) >= 3 else "", "worker": name}


def prometheus_name(name: str) -> str:
    """The name Ray's Prometheus export gives a metric of this module."""
    return RAY_PREFIX + name + ("_total" if name in COUNTERS else "")


DASHBOARD = {
    "rollout tokens/s per worker": (TOKENS_PER_SECOND, GENERATED_TOKENS),
    "async queue depth": (series_for("async/queue_depth").name,),
    "sample staleness": (series_for("async/staleness_mean").name, series_for("async/staleness_max").name),
    "weight-sync seconds": (series_for("sync/seconds").name,),
    "weight-sync bytes": (series_for("sync/bytes").name,),
    "reward per source": (FAMILIES["reward"][0], series_for("rollout/reward_mean").name),
    "KL": (series_for("kl/per_response").name, series_for("kl/per_token").name),
    "losses": (LOSS,),
    "step time per phase": (FAMILIES["timing"][0],),
}
"""What the Grafana dashboard draws: one panel per entry, over these metrics."""


def dashboard_metrics() -> set[str]:
    """Prometheus names of every metric in ``DASHBOARD``."""
    return {prometheus_name(n) for names in DASHBOARD.values() for n in names}


def ray_active() -> bool:
    """Whether this process is connected to Ray (never imports Ray itself)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


class RayMetrics:
    """Mirrors each step's flat metrics dict into Ray gauges tagged ``run=<run_name>``.

    Gauges are created on first use; a key whose gauge name is already taken by a family with
    other tags (a bare ``reward`` key next to ``reward/<source>``) is skipped.
    """

    def __init__(self, run_name: str):
        self.run_name = run_name
        self._gauges: dict[str, object] = {}

    def publish(self, metrics: dict) -> int:
        """Set one gauge per numeric entry; returns how many were set (0 outside Ray)."""
        if not ray_active():
            return 0
        n = 0
        for series, value in mirror(metrics):
            gauge = self._gauge(series)
            if gauge is not None:
                gauge.set(value, tags={"run": self.run_name, **dict(series.tags)})
                n += 1
        return n

    def _gauge(self, series: Series):
        from ray.util.metrics import Gauge

        tag_keys = ("run",) + tuple(k for k, _ in series.tags)
        gauge = self._gauges.get(series.name)
        if gauge is None:
            gauge = self._gauges[series.name] = Gauge(series.name, "rayrlhf training metric", tag_keys=tag_keys)
        return gauge if gauge.info["tag_keys"] == tag_keys else None


class RolloutMeter:
    """Generation throughput of one rollout worker, published from inside its actor."""

    def __init__(self, worker_name: str):
        self.tags = worker_tags(worker_name)
        self._gauge = self._counter = None

    def record(self, tokens: int, seconds: float) -> None:
        """One ``generate`` call: ``tokens`` generated in ``seconds``."""
        if not ray_active():
            return
        if self._gauge is None:
            from ray.util.metrics import Counter, Gauge

            keys = tuple(self.tags)
            self._gauge = Gauge(TOKENS_PER_SECOND, "tokens generated per second of a generate call", tag_keys=keys)
            self._counter = Counter(GENERATED_TOKENS, "tokens generated by a rollout worker", tag_keys=keys)
        if seconds > 0:
            self._gauge.set(tokens / seconds, tags=self.tags)
        if tokens > 0:
            self._counter.inc(tokens, tags=self.tags)
