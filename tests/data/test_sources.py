"""Parquet files, folders, saved datasets and hub names all yield rows with 1-based positions."""
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrlhf.data.formats import read_records
from rayrlhf.data.schema import Source

HH = "\n\nHuman: question {}\n\nAssistant: {}"


def hh_row(i):
    return {"chosen": HH.format(i, "yes"), "rejected": HH.format(i, "no")}


def test_parquet_rows_are_numbered_from_one(tmp_path):
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    rows = [
        {"messages": convo, "id": 1},
        {"messages": convo, "id": 2},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "?"}], "id": 3},
    ]
    path = tmp_path / "sft.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    result = read_records(str(path), "auto")
    assert (result.kind, result.format, result.n_rows) == ("sft", "messages", 3)
    assert [(r.source, r.response, r.meta) for r in result.records] == [
        (Source(str(path), 1), "Hello.", {"id": 1}),
        (Source(str(path), 2), "Hello.", {"id": 2}),
    ]
    assert [(p.line, p.field) for p in result.problems] == [(3, "messages[1].role")]


def test_parquet_null_margin_is_absent(tmp_path):
    rows = [{"prompt": "Hi", "chosen": "a", "rejected": "b", "margin": None},
            {"prompt": "Hi", "chosen": "a", "rejected": "b", "margin": 1.5}]
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert [r.margin for r in read_records(str(path), "preference").records] == [None, 1.5]


def test_folder_reads_its_files_in_order(tmp_path, write_jsonl):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".hidden").mkdir()
    a = write_jsonl("data/b.jsonl", [hh_row(2), hh_row(3)])
    b = write_jsonl("data/a.jsonl", [hh_row(1)])
    write_jsonl("data/.hidden/c.jsonl", [hh_row(9)])
    (tmp_path / "data" / "README.md").write_text("not data")
    result = read_records(str(tmp_path / "data"), "preference")
    assert [(r.source, r.prompt[0]["content"]) for r in result.records] == [
        (Source(b, 1), "question 1"), (Source(a, 1), "question 2"), (Source(a, 2), "question 3"),
    ]


def test_saved_dataset_folder(tmp_path):
    rows = [{"prompt": f"Say {i}.", "unsafe": i == 1} for i in range(3)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    result = read_records(str(tmp_path / "saved"), "prompt")
    assert [(r.prompt[0]["content"], r.meta, r.source.line) for r in result.records] == [
        ("Say 0.", {"unsafe": False}, 1), ("Say 1.", {"unsafe": True}, 2), ("Say 2.", {"unsafe": False}, 3),
    ]
    assert result.records[0].source.file == str(tmp_path / "saved")


def test_saved_dataset_dict_picks_the_split(tmp_path):
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([hh_row(1), hh_row(2)]),
        "test": datasets.Dataset.from_list([hh_row(3)]),
    })
    splits.save_to_disk(str(tmp_path / "dd"))
    test = read_records(str(tmp_path / "dd"), "preference", split="test")
    assert (test.format, [r.prompt[0]["content"] for r in test.records]) == ("hh-rlhf", ["question 3"])
    assert len(read_records(str(tmp_path / "dd"), "preference").records) == 2
    with pytest.raises(ValueError, match=r"no split 'validation'; the saved dataset has \['test', 'train'\]"):
        read_records(str(tmp_path / "dd"), "preference", split="validation")


def test_hub_name_goes_through_load_dataset(tmp_path, write_jsonl, monkeypatch):
    path = write_jsonl("hh.jsonl", [hh_row(1), hh_row(2)])
    calls = []
    real = datasets.load_dataset

    def load_dataset(name, split=None):
        calls.append((name, split))
        return real("json", data_files={"test": path}, split=split, cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    result = read_records("Anthropic/hh-rlhf", "preference", split="test")
    assert calls == [("Anthropic/hh-rlhf", "test")]
    assert result.format == "hh-rlhf"
    assert [(r.source, r.chosen) for r in result.records] == [
        (Source("Anthropic/hh-rlhf", 1), "yes"), (Source("Anthropic/hh-rlhf", 2), "yes"),
    ]


def test_json_array_file(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"prompt": "Hi", "completion": "Hello."}, {"prompt": "Bye", "completion": 3}]))
    result = read_records(str(path), "sft")
    assert [(r.source.line, r.response) for r in result.records] == [(1, "Hello.")]
    assert [(p.line, p.field) for p in result.problems] == [(2, "completion")]


def test_json_lines_with_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "Hi"}\r\n\r\n{"prompt": "Yo"}\r\n')
    result = read_records(str(path), "prompt")
    assert [(r.source.line, r.prompt[0]["content"]) for r in result.records] == [(1, "Hi"), (3, "Yo")]
    assert result.problems == []


def test_missing_and_unsupported_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_records(str(tmp_path / "nope.jsonl"), "preference")
    with pytest.raises(FileNotFoundError, match="no .jsonl, .json, .parquet files"):
        read_records(str(tmp_path), "preference")
    (tmp_path / "data.csv").write_text("prompt\nHi\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        read_records(str(tmp_path / "data.csv"), "prompt")
