"""Rows of a data source, each with the file and 1-based line it came from.

A source is a ``.jsonl`` / ``.json`` file (JSON lines; a file holding one JSON array is read too,
numbered by element), a ``.parquet`` file, a folder of such files, a folder written by
``datasets.Dataset.save_to_disk``, or a Hugging Face dataset name.

JSON lines are read and decoded one at a time so that a broken line or invalid UTF-8 becomes a
Problem for that line instead of aborting the file.
"""
from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rayrlhf.data.problems import ROW, Problem

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class Row:
    """A row as read: ``value`` is the parsed row, or ``problem`` says why there is none."""

    file: str
    line: int
    value: object = None
    problem: Problem | None = None


def open_rows(source: str, split: str = "train") -> Iterator[Row]:
    """The rows of ``source``; raises at once if the source cannot be found."""
    path = Path(source).expanduser()
    if path.is_dir():
        if _is_saved_dataset(path):
            return _dataset_rows(_load_from_disk(path, split), str(path))
        files = data_files(path)
        if not files:
            raise FileNotFoundError(f"{source}: no {', '.join(DATA_SUFFIXES)} files in this folder")
        return (row for file in files for row in _file_rows(file))
    if path.is_file():
        _check_suffix(path)
        return _file_rows(path)
    if path.suffix in DATA_SUFFIXES or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source}: no such file or folder")
    return _dataset_rows(_load_hub(source, split), source)


def data_files(folder: Path) -> list[Path]:
    """Data files under ``folder`` (recursively, hidden paths skipped), in sorted order."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in DATA_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _check_suffix(path: Path) -> None:
    if path.suffix not in DATA_SUFFIXES:
        known = ", ".join(DATA_SUFFIXES)
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected {known}")


def _file_rows(path: Path) -> Iterator[Row]:
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    return _json_rows(path)


def _json_rows(path: Path) -> Iterator[Row]:
    name = str(path)
    array = _json_array(path)
    if array is not None:
        for i, value in enumerate(array, start=1):
            yield Row(name, i, value)
        return
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            if line == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if not raw.strip():
                continue
            try:
                decoded = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                bad, at = raw[e.start:e.end], e.start + 1
                reason = f"invalid UTF-8: bytes {bad!r} at byte {at} of the line; expected UTF-8"
                yield Row(name, line, problem=Problem(name, line, ROW, reason))
                continue
            try:
                value = json.loads(decoded)
            except json.JSONDecodeError as e:
                reason = f"broken JSON: {e.msg} at column {e.colno}; expected an object per line"
                yield Row(name, line, problem=Problem(name, line, ROW, reason))
                continue
            yield Row(name, line, value)


def _json_array(path: Path) -> list | None:
    """The rows of a file holding one JSON array, or None for JSON lines."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(codecs.BOM_UTF8 + b" \t\r\n")
    if not head.startswith(b"["):
        return None
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig"))
    except ValueError:  # a JSON-lines file whose first row is a list: read it line by line
        return None
    return value if isinstance(value, list) else None


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    line = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            line += 1
            yield Row(str(path), line, value)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    )


def _load_from_disk(path: Path, split: str):
    import datasets

    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"{path}: no split {split!r}; the saved dataset has {sorted(data)}")
        data = data[split]
    return data


def _load_hub(name: str, split: str):
    import datasets

    return datasets.load_dataset(name, split=split)


def _dataset_rows(data, name: str) -> Iterator[Row]:
    for i, value in enumerate(data, start=1):
        yield Row(name, i, value)
