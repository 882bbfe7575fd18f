"""``rayrlhf data validate`` run through ``main`` as the top-level CLI calls it."""
import pytest

from rayrlhf.data.cli import build_parser, main

BAD_ROWS = [
    {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."},
    "{not json",
    {"prompt": "Hi", "rejected": "Go."},
    {"prompt": "Hi", "chosen": "Same.", "rejected": "Same."},
    {"prompt": "The cat sat on the mat and looked at the dog. " * 6, "chosen": "Hello.", "rejected": "Go."},
]


@pytest.fixture
def tokenizer_dir(tokenizer, tmp_path):
    path = tmp_path / "tok"
    tokenizer.save_pretrained(str(path))
    return str(path)


def test_problems_go_to_stderr_and_exit_1(write_jsonl, tokenizer_dir, capsys):
    path = write_jsonl("bad.jsonl", BAD_ROWS)
    code = main(["validate", path, "--tokenizer", tokenizer_dir, "--max-prompt-tokens", "40"])
    out, err = capsys.readouterr()
    assert code == 1
    lines = err.splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{path}:2", f"{path}:3", f"{path}:4", f"{path}:5"]
    assert lines[1] == f"{path}:3: chosen: missing or null; format 'explicit' needs the fields prompt, chosen, rejected"
    assert lines[2] == f"{path}:4: rejected: identical to chosen; a comparison needs two different responses"
    assert "more than max_prompt_tokens=40" in lines[3]
    assert out == f"{path}: 5 rows read as explicit, 3 records, 4 problems\n"


def test_clean_files_exit_0(write_jsonl, capsys):
    prefs = write_jsonl("prefs.jsonl", [{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go.", "margin": "better"}])
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    sft = write_jsonl("sft.jsonl", [{"messages": convo}])
    ranked = write_jsonl("ranked.jsonl", [{"prompt": "Hi", "responses": ["a", "b", "c"], "scores": [2, 1, 1]}])
    assert main(["validate", prefs, sft, ranked]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        f"{prefs}: 1 rows read as explicit, 1 records, 0 problems",
        f"{sft}: 1 rows read as messages, 1 records, 0 problems",
        f"{ranked}: 1 rows read as ranked, 2 records, 0 problems",
        f"{ranked}: left out 1 tie",
    ]


def test_kind_and_format_flags(write_jsonl, capsys):
    path = write_jsonl("p.jsonl", [{"prompt": "\n\nHuman: Hi\n\nAssistant:", "chosen": " a", "rejected": " b"}])
    assert main(["validate", path, "--kind", "prompt", "--format", "rm-static"]) == 0
    assert capsys.readouterr().out == f"{path}: 1 rows read as rm-static, 1 records, 0 problems\n"
    assert main(["validate", path, "--kind", "sft", "--format", "rm-static"]) == 1
    assert "unknown sft format 'rm-static'" in capsys.readouterr().err


def test_unreadable_source_is_reported_and_the_rest_still_checked(write_jsonl, tmp_path, capsys):
    good = write_jsonl("ok.jsonl", [{"prompt": "Hi"}])
    missing = str(tmp_path / "missing.jsonl")
    assert main(["validate", missing, good]) == 1
    out, err = capsys.readouterr()
    assert err == f"{missing}: cannot read: {missing}: no such file or folder\n"
    assert out == f"{good}: 1 rows read as prompt, 1 records, 0 problems\n"


def test_token_limits_need_a_tokenizer(write_jsonl, capsys):
    path = write_jsonl("ok.jsonl", [{"prompt": "Hi"}])
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", path, "--max-prompt-tokens", "10"])
    assert exit_info.value.code == 2
    assert "need --tokenizer" in capsys.readouterr().err


def test_parser_prog():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["validate"]
    assert sub.prog == "rayrlhf data validate"


def test_a_folder_says_what_each_file_left_out(tmp_path, capsys):
    import json

    folder = tmp_path / "ranked"
    folder.mkdir()
    row = {"prompt": "Hi", "responses": ["a", "b", "c"], "scores": [2, 1, 1]}
    (folder / "a.jsonl").write_text(json.dumps(row) + "\n")
    (folder / "b.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(dict(row, scores=[1, 1, 1])) + "\n")
    assert main(["validate", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{folder}: 3 rows read as ranked, 4 records, 0 problems",
        f"{folder}: left out 5 tie",
        f"  {folder / 'a.jsonl'}: left out 1 tie",
        f"  {folder / 'b.jsonl'}: left out 4 tie",
    ]
