"""A checkpoint that cannot be written says where, why, which checkpoint is intact and how to go
on, and leaves the earlier checkpoints as they were."""
import errno
import os

import pytest

from rayrlhf import checkpoint as ckpt


def _fill_ok(tmp):
    with open(os.path.join(tmp, "policy.safetensors"), "wb") as f:
        f.write(b"weights")


def _fill_disk_full(tmp):
    with open(os.path.join(tmp, "policy.safetensors"), "wb") as f:
        f.write(b"half")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_names_the_folder_the_cause_and_the_intact_checkpoint(tmp_path):
    run = str(tmp_path)
    first = ckpt.write_checkpoint(run, 1, _fill_ok, {"k": 1})
    with pytest.raises(ckpt.CheckpointWriteError) as e:
        ckpt.write_checkpoint(run, 2, _fill_disk_full, {"k": 2})
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {os.path.join(run, 'checkpoints', 'step-00000002')}: writing failed (OSError:")
    assert "No space left on device" in msg
    assert f"the previous checkpoint {first} is intact" in msg and "--resume" in msg
    assert ckpt.latest_checkpoint(run) == first
    assert open(os.path.join(first, "policy.safetensors"), "rb").read() == b"weights"
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["step-00000001"]  # no half-written folder


def test_a_failed_first_checkpoint_says_there_is_none_to_resume(tmp_path):
    with pytest.raises(ckpt.CheckpointWriteError, match="there is no earlier checkpoint: a rerun starts from the "
                                                        "beginning"):
        ckpt.write_checkpoint(str(tmp_path), 1, _fill_disk_full, {})
    assert ckpt.latest_checkpoint(str(tmp_path)) is None
