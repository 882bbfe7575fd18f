"""Atomic writes: a reader (or a resumed run) sees the old file or folder, or the new one,
never half of either."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_safetensors(tensors: dict, path: str, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file``, whose I/O errors do not name the file: here they do."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as e:
        raise OSError(f"writing {path} failed: {e}") from e


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, permissions, a worker's save failed);
    the message names the folder, the cause, the checkpoint that is intact and how to go on
    (``rayrlhf.checkpoint.write_checkpoint``)."""


class ActorLostError(RuntimeError):
    """An actor a run cannot replace (a trainer or critic rank; the reference or a reward model
    once Ray's restarts of it, ``ppo.max_worker_restarts``, are used up) died; the message names it, the phase, the checkpoint that is intact and how to go on
    (``rayrlhf.driver.ppo_stage.actor_lost``)."""


@contextlib.contextmanager
def atomic_dir(final: str):
    """Yield a temporary folder; on success it replaces ``final`` in one rename.

    If ``final`` exists it is moved aside first and removed only once the new folder is in
    place, so a crash at any point leaves either the old or the new folder complete (the
    aside copy, ``<final>.old``, is restored by ``recover_dir`` on the next start).
    """
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(final)}-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final + ".old"
    try:
        if os.path.exists(final):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:  # the rename failed: no half-made folder stays, the old one comes back
        shutil.rmtree(tmp, ignore_errors=True)
        recover_dir(final)
        raise
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: str) -> None:
    """Finish or undo an interrupted ``atomic_dir`` swap."""
    old = final + ".old"
    if os.path.exists(old):
        if os.path.exists(final):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
