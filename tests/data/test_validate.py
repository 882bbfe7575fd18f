"""One problem per malformed row, with the right line and field; semantic checks on records."""
import pytest

from rayrlhf.data.schema import PreferenceRecord, PromptRecord, Source, SFTRecord
from rayrlhf.data.validate import (
    DataValidationError,
    Problem,
    load_validated,
    validate_records,
    validate_source,
)

LONG = "The cat sat on the mat and looked at the dog. " * 8
LIMITS = {"max_prompt_tokens": 60, "max_response_tokens": 60}

# (row, expected (line, field) or None for a good row); a None row is a blank line.
MALFORMED = [
    ({"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "margin": "better"}, None),
    ('{"prompt": "Hi", "chosen": "Hello" "rejected": "Go"}', "<row>"),
    (b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', "<row>"),
    ({"prompt": "Hi", "rejected": "Go away."}, "chosen"),
    ({"prompt": "Hi", "chosen": "Hello.", "rejected": 42}, "rejected"),
    ({"prompt": "Hi", "chosen": "   ", "rejected": "Go away."}, "chosen"),
    ({"prompt": "Hi", "chosen": "Hello.", "rejected": "Hello."}, "rejected"),
    ({"prompt": [{"role": "bot", "content": "Hi"}], "chosen": "Hello.", "rejected": "Go."}, "prompt[0].role"),
    ({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go.", "margin": "way better"}, "margin"),
    ({"prompt": LONG, "chosen": "Hello.", "rejected": "Go."}, "prompt"),
    ([1, 2, 3], "<row>"),
    ({"prompt": {"role": "user", "content": "Hi"}, "chosen": "Hello.", "rejected": "Go."}, "prompt"),
    ({"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "user", "content": "Hello."}],
      "rejected": "Go."}, "chosen[0].role"),
    ({"prompt": [{"role": "user"}], "chosen": "Hello.", "rejected": "Go."}, "prompt[0].content"),
    (None, None),
    ({"prompt": "Hi", "chosen": None, "rejected": "Go."}, "chosen"),
    ({"prompt": "Hi", "chosen": LONG, "rejected": "Go."}, "chosen"),
    ({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go.", "margin": 0.25}, None),
]


@pytest.fixture
def malformed(write_jsonl):
    return write_jsonl("malformed.jsonl", ["" if row is None else row for row, _ in MALFORMED])


def expected_problems():
    return [(line, field) for line, (row, field) in enumerate(MALFORMED, start=1) if field is not None]


def test_each_malformed_row_gives_exactly_one_problem(malformed, tokenizer):
    result, problems = validate_source(malformed, "preference", tokenizer=tokenizer, **LIMITS)
    assert [(p.line, p.field) for p in problems] == expected_problems()
    assert all(p.file == malformed for p in problems)
    assert result.format == "explicit"
    assert result.n_rows == len(MALFORMED) - 1  # the blank line is not a row
    # the good rows and the rows whose problems are semantic still parse
    assert [r.source.line for r in result.records] == [1, 6, 7, 10, 17, 18]


def test_reasons_say_what_was_found_and_what_is_expected(malformed, tokenizer):
    _, problems = validate_source(malformed, "preference", tokenizer=tokenizer, **LIMITS)
    by_line = {p.line: str(p) for p in problems}
    assert by_line[2] == f"{malformed}:2: <row>: broken JSON: Expecting ',' delimiter at column 36; expected an object per line"
    assert by_line[3] == f"{malformed}:3: <row>: invalid UTF-8: bytes b'\\xe9' at byte 16 of the line; expected UTF-8"
    assert by_line[4].endswith("chosen: missing or null; format 'explicit' needs the fields prompt, chosen, rejected")
    assert by_line[5].endswith("rejected: expected a string or a list of one assistant message, found number 42")
    assert by_line[6].endswith("chosen: empty or whitespace only; expected the text of the assistant's reply")
    assert by_line[7].endswith("rejected: identical to chosen; a comparison needs two different responses")
    assert by_line[8].endswith("prompt[0].role: unknown role 'bot'; expected one of system, user, assistant")
    assert "unknown margin string 'way better'" in by_line[9]
    assert "more than max_prompt_tokens=60" in by_line[10]
    assert by_line[11].endswith("<row>: expected an object with fields prompt, chosen, rejected, found a list of 3 items")
    assert "expected a string or a list of messages, found an object" in by_line[12]
    assert by_line[14].endswith("prompt[0].content: missing; expected the message text as a string")
    assert "more than max_response_tokens=60" in by_line[17]


def test_without_limits_only_the_length_problems_go(malformed):
    _, problems = validate_source(malformed, "preference")
    assert [(p.line, p.field) for p in problems] == [e for e in expected_problems() if e[0] not in (10, 17)]


def test_ranked_rows(write_jsonl):
    rows = [
        {"prompt": "Pick.", "responses": ["a", "b", "c"]},
        {"prompt": "Pick.", "responses": ["only one"]},
        {"prompt": "Pick.", "responses": ["a", "b"], "scores": [1.0]},
        {"prompt": "Pick.", "responses": ["a", 7]},
        {"prompt": "Pick.", "responses": "a, b"},
        {"prompt": "Pick.", "responses": ["a", "b"], "scores": [1, "high"]},
        {"prompt": "Pick.", "responses": ["a", "b"], "scores": [2, 2]},
    ]
    result, problems = validate_source(write_jsonl("ranked.jsonl", rows), "preference")
    assert [(p.line, p.field) for p in problems] == [
        (2, "responses"), (3, "scores"), (4, "responses[1]"), (5, "responses"), (6, "scores[1]"),
    ]
    assert "found 1 response(s); a ranking needs at least 2" in problems[0].reason
    assert len(result.records) == 3
    assert result.dropped == {"tie": 1}


def test_sft_rows(write_jsonl):
    ok = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    rows = [
        {"messages": ok},
        {"messages": "user: Hi"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "gpt", "content": "Hello."}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ["Hello."]}]},
        {"messages": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
        {"messages": [{"role": "user", "content": "Hi"}, "Hello."]},
        {"messages": []},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
    ]
    _, problems = validate_source(write_jsonl("sft.jsonl", rows), "sft")
    assert [(p.line, p.field) for p in problems] == [
        (2, "messages"), (3, "messages[1].role"), (4, "messages[1].content"), (5, "messages[0].role"),
        (6, "messages[1]"), (7, "messages"), (8, "response"),
    ]
    assert "expected a list of messages" in problems[0].reason
    assert "ShareGPT-style" in problems[3].reason


def test_validate_records_checks():
    src = Source("mem", 4)
    records = [
        PreferenceRecord([{"role": "user", "content": "Hi"}], "a", "a ", source=src),
        PreferenceRecord([{"role": "robot", "content": "Hi"}], "a", "b"),
        PreferenceRecord([{"role": "user", "content": " "}], "a", "b", margin_label="meh", margin=float("inf")),
        SFTRecord([{"role": "user", "content": "Hi"}], "a"),
    ]
    problems = validate_records(records, "preference")
    assert [(p.file, p.line, p.field) for p in problems] == [
        ("mem", 4, "rejected"),
        ("<records>", 2, "prompt[0].role"),
        ("<records>", 3, "prompt[0].content"),
        ("<records>", 3, "margin_label"),
        ("<records>", 3, "margin"),
        ("<records>", 4, "<record>"),
    ]
    assert validate_records([PromptRecord([{"role": "user", "content": "Hi"}])], "prompt") == []


def test_limits_need_a_tokenizer():
    with pytest.raises(ValueError, match="need a tokenizer"):
        validate_records([], "sft", max_prompt_tokens=10)


def test_prompt_length_counts_the_chat_template(tokenizer):
    prompt = [{"role": "user", "content": "Hello"}]
    n = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))
    record = SFTRecord(prompt, "Hi")
    assert validate_records([record], "sft", tokenizer, max_prompt_tokens=n) == []
    (p,) = validate_records([record], "sft", tokenizer, max_prompt_tokens=n - 1)
    assert p.reason.startswith(f"{n} tokens with the chat template")


def test_response_length_counts_eos(tokenizer):
    n = len(tokenizer("Hello there", add_special_tokens=False).input_ids) + 1
    record = SFTRecord([{"role": "user", "content": "Hi"}], "Hello there")
    assert validate_records([record], "sft", tokenizer, max_response_tokens=n) == []
    assert [p.field for p in validate_records([record], "sft", tokenizer, max_response_tokens=n - 1)] == ["response"]


def test_load_validated_lists_every_problem(malformed):
    with pytest.raises(DataValidationError) as info:
        load_validated(malformed, "preference")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.splitlines()[0] == f"13 problems in {malformed}:"
    assert message.splitlines()[1:] == [str(p) for p in info.value.problems]
    assert [p.line for p in info.value.problems] == [e[0] for e in expected_problems() if e[0] not in (10, 17)]


def test_load_validated_shows_the_first_50(write_jsonl):
    path = write_jsonl("bad.jsonl", ["{"] * 60)
    with pytest.raises(DataValidationError) as info:
        load_validated(path, "sft")
    lines = str(info.value).splitlines()
    assert lines[0] == f"60 problems in {path}:"
    reason = "broken JSON: Expecting property name enclosed in double quotes at column 2; expected an object per line"
    assert lines[1] == str(Problem(path, 1, "<row>", reason))
    assert len(lines) == 1 + 50 + 1
    assert lines[-1] == "... and 10 more"


def test_load_validated_returns_clean_records_or_drops_bad_rows(write_jsonl, malformed):
    path = write_jsonl("ok.jsonl", [{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."}])
    (r,) = load_validated(path, "preference")
    assert (r.chosen, r.rejected) == ("Hello.", "Go.")
    kept = load_validated(malformed, "preference", drop_invalid=True)
    assert [r.source.line for r in kept] == [1, 10, 17, 18]


def test_load_validated_refuses_an_empty_source(write_jsonl):
    with pytest.raises(DataValidationError, match="no rows"):
        load_validated(write_jsonl("empty.jsonl", ["", "  "]), "prompt")


def test_an_empty_source_is_a_problem_for_validation_and_for_a_run(write_jsonl):
    """`rayrlhf data validate` reports it, and a PPO or RS run stops at reading its prompts, before
    any actor starts."""
    from types import SimpleNamespace

    from rayrlhf.data.validate import read_splits

    path = write_jsonl("empty.jsonl", [])
    _, problems = validate_source(path, "prompt")
    assert [(p.line, p.field, p.reason) for p in problems] == [(0, "<source>", "no rows; expected at least one record")]
    data = SimpleNamespace(train=[path], eval=[], format="auto", split="train", max_prompt_tokens=None,
                           too_long="error", limit=None)
    with pytest.raises(DataValidationError, match="empty.jsonl.*no rows"):
        read_splits(data, "prompt")


def test_too_long_rows_of_a_folder_are_counted_and_named_per_file(tmp_path, tokenizer, capsys):
    """Two files of one folder, each with a long row on line 2: two rows left out, one per file,
    each named by its own file and its line within that file."""
    import json

    from rayrlhf.config.schema import DataSection
    from rayrlhf.data.validate import read_splits

    folder = tmp_path / "prefs"
    folder.mkdir()
    good = {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."}
    long = {"prompt": LONG, "chosen": "Hello.", "rejected": "Go."}
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (good, long, good)))
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (good, long, long, good)))
    data = DataSection(train=[str(folder)], eval=[str(folder / "a.jsonl")], too_long="drop", **LIMITS)
    parts, report = read_splits(data, "preference", tokenizer, max_response_tokens=60)
    assert len(parts["train"]) == 4
    a, b = str(folder / "a.jsonl"), str(folder / "b.jsonl")
    src = report["sources"][str(folder)]
    assert src["dropped"]["too_long"] == 3
    assert src["files"][a] == {"rows": 3, "records": 2, "dropped": {"too_long": 1}}
    assert src["files"][b] == {"rows": 4, "records": 2, "dropped": {"too_long": 2}}
    assert [x.split(": prompt: ")[0] for x in src["too_long"]] == [f"{a}:2", f"{b}:2", f"{b}:3"]
    out = capsys.readouterr().out
    assert f"{folder}: left out 3 rows over the token limits ({a}: 1 row, line 2; {b}: 2 rows, lines 2, 3)" in out
    assert report["sources"][a]["dropped"]["too_long"] == 1


def test_ties_of_a_folder_are_counted_per_file(tmp_path):
    import json

    folder = tmp_path / "ranked"
    folder.mkdir()
    row = {"prompt": "Hi", "responses": ["a", "b", "c"], "scores": [2, 1, 1]}
    (folder / "a.jsonl").write_text(json.dumps(row) + "\n")
    (folder / "b.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(dict(row, scores=[1, 1, 1])) + "\n")
    result, problems = validate_source(str(folder), "preference")
    assert not problems
    assert result.dropped == {"tie": 5}
    assert result.dropped_by_file == {str(folder / "a.jsonl"): {"tie": 1}, str(folder / "b.jsonl"): {"tie": 4}}
    assert result.rows_by_file == {str(folder / "a.jsonl"): 1, str(folder / "b.jsonl"): 2}


def test_a_ranked_rows_problem_is_reported_once_not_once_per_pair(write_jsonl, capsys):
    from rayrlhf.data.cli import main

    rows = [
        {"prompt": "Pick.", "responses": ["a", "  ", "c", "d"]},
        {"prompt": [{"role": "user", "content": " "}], "responses": ["a", "b", "c"]},
        {"prompt": "Pick.", "responses": ["a", "b", "a"]},
        {"prompt": "Pick.", "responses": ["x", "y", "z"], "scores": [1, 3, 2]},
    ]
    path = write_jsonl("ranked.jsonl", rows)
    result, problems = validate_source(path, "preference")
    assert len(result.records) == 6 + 3 + 3 + 3
    empty = "empty or whitespace only; expected the text of the assistant's reply"
    assert [str(p) for p in problems] == [
        f"{path}:1: responses: the response ranked 2 (1 = best): {empty}",
        f"{path}:2: prompt[0].content: empty user message; expected text",
        f"{path}:3: responses: the responses ranked 1 and 3 (1 = best) are identical; a ranking needs different responses",
    ]
    assert main(["validate", path]) == 1
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 3
    assert out == f"{path}: 4 rows read as ranked, 15 records, 3 problems\n"
