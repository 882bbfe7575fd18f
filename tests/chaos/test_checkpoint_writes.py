"""A write failure at each write point of a checkpoint (its temporary folder, a trained
model's files, state.json, the final rename) leaves the previous checkpoint as it was, no
half-written folder, and a message naming the folder, the cause and how to resume."""
import builtins
import errno
import os
import tempfile

import pytest

from rayrlhf import checkpoint as ckpt
from rayrlhf.utils import fs
from tests.chaos import tally

FILES = ["policy.safetensors", "policy-optim.safetensors", "policy-optim.json", "policy-rng-rank0.pt"]
POINTS = ["folder", *FILES, "state.json", "rename"]


def _fill(tmp):
    for name in FILES:
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(name.encode())


def _disk_full(path):
    raise OSError(errno.ENOSPC, "No space left on device", path)


@pytest.mark.parametrize("point", POINTS, ids=[f"write-fails-at-{p}" for p in POINTS])
def test_a_write_failure_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, point):
    run = str(tmp_path)
    first = ckpt.write_checkpoint(run, 1, _fill, {"k": 1})
    before = {n: open(os.path.join(first, n), "rb").read() for n in os.listdir(first)}
    real_open, real_mkdtemp, real_replace = open, tempfile.mkdtemp, os.replace
    fired = []

    def fill(tmp):
        def failing_open(path, *a, **k):
            if os.path.basename(str(path)) == point:
                fired.append(point)
                _disk_full(path)
            return real_open(path, *a, **k)

        monkeypatch.setattr(builtins, "open", failing_open)
        try:
            _fill(tmp)
        finally:
            monkeypatch.setattr(builtins, "open", real_open)

    def mkdtemp(*a, **k):
        if point == "folder" and k.get("prefix", "").startswith(".tmp-step-"):
            fired.append(point)
            _disk_full(k.get("dir"))
        return real_mkdtemp(*a, **k)

    def replace(src, dst):
        if point == "rename" and os.path.basename(str(dst)) == "step-00000002":
            fired.append(point)
            _disk_full(dst)
        return real_replace(src, dst)

    def write_text(path, text, real=fs.atomic_write_text):
        if point == "state.json" and os.path.basename(path) == "state.json":
            fired.append(point)
            _disk_full(path)
        return real(path, text)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(fs.os, "replace", replace)
    monkeypatch.setattr(fs, "atomic_write_text", write_text)
    with pytest.raises(ckpt.CheckpointWriteError) as e:
        ckpt.write_checkpoint(run, 2, fill, {"k": 2})
    monkeypatch.undo()
    assert fired == [point]
    tally.injected()
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {os.path.join(run, 'checkpoints', 'step-00000002')}: writing failed (OSError:")
    assert "No space left on device" in msg and f"the previous checkpoint {first} is intact" in msg
    assert "--resume" in msg
    assert ckpt.latest_checkpoint(run) == first
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["step-00000001"]  # nothing half-written
    assert {n: open(os.path.join(first, n), "rb").read() for n in os.listdir(first)} == before
    # Once the disk has room again, the same write goes through.
    assert ckpt.latest_checkpoint(run) == first and ckpt.write_checkpoint(run, 2, _fill, {"k": 2}).endswith("02")
    tally.failed_clearly()


class _Group:
    role = "policy"

    def call_async(self, method, folder):
        if method == "save":
            _fill(folder)
        return [None]  # load: the optimizer's learning rate unchanged


def test_a_resume_takes_the_summary_saved_with_its_checkpoint(tmp_path, monkeypatch):
    """A loop checkpoint holds the run's summary (histories a resume goes on from): when the
    run-level copy fails to be written after the checkpoint landed, the error says so and names
    the checkpoint, and the resume reads the checkpoint's own summary, not the stale copy."""
    from types import SimpleNamespace

    import rayrlhf.driver.common as common

    monkeypatch.setattr(common, "get", lambda refs, timeout, what: refs)
    monkeypatch.setattr(common, "restore_fleet_size", lambda fleet, state: None)
    run, fleet = str(tmp_path), SimpleNamespace(target=1)
    common.save_loop_checkpoint(run, 1, [_Group()], fleet, {"version": 1}, 3, {"history": [1]}, 1.0)
    real = fs.atomic_write_json

    def failing(path, value):
        if os.path.dirname(path) == run:
            _disk_full(path)
        return real(path, value)

    monkeypatch.setattr(common, "atomic_write_json", failing)
    with pytest.raises(fs.CheckpointWriteError) as e:
        common.save_loop_checkpoint(run, 2, [_Group()], fleet, {"version": 2}, 3, {"history": [1, 2]}, 1.0)
    tally.injected()
    tally.failed_clearly()
    monkeypatch.setattr(common, "atomic_write_json", real)
    second = os.path.join(run, "checkpoints", "step-00000002")
    assert str(e.value).startswith(f"{os.path.join(run, 'summary.json')}: writing failed (OSError:")
    assert f"the latest checkpoint {second} is intact" in str(e.value)
    assert fs.read_json(os.path.join(run, "summary.json")) == {"history": [1]}  # the stale copy
    found, state, summary = common.load_loop_checkpoint(run, [_Group()], fleet, 1.0)
    assert (found, state["version"], summary) == (second, 2, {"history": [1, 2]})
