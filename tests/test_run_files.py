"""Run files get the modes a plain open() / mkdir would give them under the process's umask."""
import os

import pytest
import torch

from rayrlhf.checkpoint import write_checkpoint
from rayrlhf.config import SFTConfig, save_config
from rayrlhf.utils import fs
from tests.conftest import build_model_dir

MODES = [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o027, 0o640, 0o750)]


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.fixture(params=MODES, ids=lambda m: f"umask{m[0]:03o}")
def umask(request):
    """Runs the test under the umask, then checks the code left it as set, and restores it."""
    mask, file_mode, dir_mode = request.param
    old = os.umask(mask)
    try:
        yield file_mode, dir_mode
        assert os.umask(mask) == mask
    finally:
        os.umask(old)


def test_config_and_summary_are_written_with_the_umask_mode(umask, tmp_path):
    file_mode, _ = umask
    save_config(SFTConfig(), str(tmp_path / "config.yaml"))
    fs.atomic_write_json(str(tmp_path / "summary.json"), {"eval/reward": 1.0})
    with open(tmp_path / "plain.txt", "w") as f:  # what a plain open() gives
        f.write("x")
    assert _mode(tmp_path / "config.yaml") == _mode(tmp_path / "summary.json") == _mode(tmp_path / "plain.txt")
    assert _mode(tmp_path / "config.yaml") == file_mode
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_safetensors_and_atomic_folders_follow_the_umask(umask, tmp_path):
    file_mode, dir_mode = umask
    fs.save_safetensors({"w": torch.zeros(2)}, str(tmp_path / "alone.safetensors"))
    assert _mode(tmp_path / "alone.safetensors") == file_mode
    with fs.atomic_dir(str(tmp_path / "folder")) as tmp:
        os.makedirs(os.path.join(tmp, "sub"))
        with open(os.path.join(tmp, "sub", "private.bin"), "wb") as f:
            os.chmod(f.name, 0o600)  # as a library writing into the folder may leave it
        os.symlink("sub/private.bin", os.path.join(tmp, "link"))
    out = tmp_path / "folder"
    assert (_mode(out), _mode(out / "sub"), _mode(out / "sub" / "private.bin")) == (dir_mode, dir_mode, file_mode)


def test_checkpoint_folders_follow_the_umask(umask, tmp_path):
    file_mode, dir_mode = umask
    final = write_checkpoint(str(tmp_path), 3, lambda d: fs.save_safetensors({"w": torch.ones(1)},
                                                                            os.path.join(d, "model.safetensors")),
                             {"summary": {}})
    assert _mode(final) == dir_mode
    assert _mode(os.path.join(final, "model.safetensors")) == _mode(os.path.join(final, "state.json")) == file_mode


def test_an_export_is_readable_as_the_umask_allows(umask, tiny_tokenizer_dir, tmp_path):
    from rayrlhf.models import export_hf, load_causal_lm, load_tokenizer

    file_mode, dir_mode = umask
    src = build_model_dir(tmp_path / "src", tiny_tokenizer_dir, hidden=32, heads=1, layers=1)
    out = export_hf(load_causal_lm(src), load_tokenizer(src), str(tmp_path / "export"), extra={"stage": "sft"})
    assert _mode(out) == dir_mode
    for name in ("model.safetensors", "config.json", "tokenizer.json", "rayrlhf.json"):
        assert _mode(os.path.join(out, name)) == file_mode, name


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_current_umask_reads_it_and_leaves_it_as_it_was(mask, monkeypatch):
    old = os.umask(mask)
    try:
        assert fs.current_umask() == mask
        monkeypatch.setattr(fs, "_proc_umask", lambda: None)  # no /proc: set and restore
        assert fs.current_umask() == mask
        assert (fs.file_mode(), fs.dir_mode()) == (0o666 & ~mask, 0o777 & ~mask)
        assert os.umask(mask) == mask
    finally:
        os.umask(old)
