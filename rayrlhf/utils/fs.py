"""Atomic writes: a reader (or a resumed run) sees the old file or folder, or the new one,
never half of either.

Every file and folder written here gets the mode a plain ``open()`` or ``os.makedirs`` would
give it, ``0o666`` / ``0o777`` less the umask (not the private modes of ``tempfile``), so that
under the usual umask (022, or 002 for a group) teammates on shared storage can read a run.
Checkpoint folders follow the same rule: what a umask allows for a run's exports it allows for
the checkpoints a teammate resumes or inspects. A private run comes from a private umask (077).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading

_UMASK_LOCK = threading.Lock()


def _proc_umask() -> int | None:
    """The umask as Linux shows it in ``/proc/self/status`` (read without changing it); None
    where it does not."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_umask() -> int:
    """The process's umask: ``_proc_umask``, or else set to 077 and restored at once (a file
    another thread makes meanwhile is at worst private), under a lock so that two readers here
    never take each other's 077 for the umask."""
    mask = _proc_umask()
    if mask is not None:
        return mask
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``os.makedirs`` gives a new folder."""
    return 0o777 & ~current_umask()


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
    """Write to a temporary file beside ``path``, fsync, then rename over it; the file gets
    ``file_mode()``, as a plain ``open()`` would give it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        os.fchmod(fd, file_mode())
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
    """``safetensors.torch.save_file``, whose I/O errors do not name the file: here they do; the
    file gets ``file_mode()`` (safetensors itself makes it private)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as e:
        raise OSError(f"writing {path} failed: {e}") from e
    os.chmod(path, file_mode())


def open_modes(folder: str) -> None:
    """Give every file under ``folder`` ``file_mode()`` and every folder ``dir_mode()``: what the
    libraries that wrote them into it (safetensors, through ``save_pretrained`` too) made private."""
    files, dirs = file_mode(), dir_mode()
    for root, subdirs, names in os.walk(folder):
        for name, mode in [(d, dirs) for d in subdirs] + [(n, files) for n in names]:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.chmod(path, mode)


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
    aside copy, ``<final>.old``, is restored by ``recover_dir`` on the next start). The folder
    gets ``dir_mode()``, as ``os.makedirs`` would give it, and what is written into it the
    modes of ``open_modes``: exports, reports and checkpoints alike.
    """
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(final)}-", dir=parent)
    try:
        os.chmod(tmp, dir_mode())
        yield tmp
        open_modes(tmp)
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
