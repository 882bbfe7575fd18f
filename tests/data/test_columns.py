"""Column mapping (``data.columns``, ``--columns``), and the new formats through ``data validate``
and ``read_splits`` as SFT and RM training read them."""
import pytest

from rayrlhf.config.schema import DataSection
from rayrlhf.data import columns as mapping
from rayrlhf.data.cli import main
from rayrlhf.data.formats import read_records
from rayrlhf.data.schema import PreferenceRecord, Source, SFTRecord
from rayrlhf.data.validate import DataValidationError, read_splits, validate_source

RENAMED = {"prompt": "question", "chosen": "better", "rejected": "worse"}


def user(text):
    return {"role": "user", "content": text}


@pytest.fixture
def renamed(write_jsonl):
    return write_jsonl("renamed.jsonl", [
        {"question": "Hi", "better": "Hello.", "worse": "Go.", "id": 1},
        {"question": "Hi", "worse": "Go."},
        {"question": "Hi", "better": None, "worse": "Go."},
        {"question": "Hi", "better": [{"role": "bot", "content": "x"}], "worse": "Go."},
        {"question": "Hi", "better": "Same.", "worse": "Same."},
        {"question": "Hi", "prompt": "Other", "better": "Hello.", "worse": "Go."},
    ])


def test_mapped_columns_are_read_as_ours_and_problems_name_the_files(renamed):
    result, problems = validate_source(renamed, "auto", columns=RENAMED)
    assert (result.kind, result.format) == ("preference", "explicit")
    assert result.records[0] == PreferenceRecord([user("Hi")], "Hello.", "Go.", None, None, Source(renamed, 1), {"id": 1})
    assert [str(p) for p in problems] == [
        f"{renamed}:2: better: missing; the column mapping chosen=better reads 'chosen' from it",
        f"{renamed}:3: better: missing or null; format 'explicit' needs the fields prompt, chosen, rejected "
        "(the file's column 'better', read as 'chosen')",
        f"{renamed}:4: better[0].role: unknown role 'bot'; expected one of system, user, assistant",
        f"{renamed}:5: worse: identical to chosen; a comparison needs two different responses "
        "(the file's column 'worse', read as 'rejected')",
        f"{renamed}:6: prompt: the file has its own column 'prompt', and the column mapping "
        "prompt=question reads 'prompt' from 'question'; map or rename one of them",
    ]


def test_without_the_mapping_the_renamed_file_is_refused(renamed):
    with pytest.raises(ValueError, match="cannot tell the prompt format from the columns"):
        read_records(renamed, "auto")


def test_mapping_applies_to_every_format(write_jsonl):
    path = write_jsonl("s.jsonl", [{"ask": "Add.", "extra": "2 + 2", "answer": "4"}])
    result = read_records(path, "auto", columns={"instruction": "ask", "input": "extra", "output": "answer"})
    assert (result.format, result.records) == ("alpaca", [SFTRecord([user("Add.\n\n2 + 2")], "4", Source(path, 1), {})])
    ranked = write_jsonl("r.jsonl", [{"q": "Pick.", "outs": ["a", 7]}])
    result = read_records(ranked, "auto", columns={"prompt": "q", "responses": "outs"})
    assert result.format == "ranked"
    assert [str(p) for p in result.problems] == [f"{ranked}:1: outs[1]: expected a string, found number 7"]


def test_parse_and_check():
    assert mapping.parse("prompt=question, chosen=better,") == {"prompt": "question", "chosen": "better"}
    with pytest.raises(ValueError, match="expected OURS=THEIRS pairs separated by commas, found 'prompt'"):
        mapping.parse("prompt")
    assert mapping.check({"promt": "q", "chosen": "q"}) == [
        "columns: unknown column 'promt'; expected one of " + ", ".join(mapping.OURS),
        "columns: promt, chosen all map to the file's column 'q'; map each to its own column",
    ]
    assert DataSection(train=["x"], columns={"prompt": ""}).validate() == [
        "columns.prompt: expected the file's column name, found ''",
    ]
    with pytest.raises(ValueError, match="unknown column 'promt'"):
        read_records("unused.jsonl", "auto", columns={"promt": "q"})


SHAREGPT = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]
ALPACA = [{"instruction": "Add.", "input": "2 + 2", "output": "4"}, {"instruction": "Hi.", "output": "Hello."}]
PAIRS = [{"question": "Hi", "better": "Hello.", "worse": "Go."}, {"question": "Bye", "better": "Bye!", "worse": "No."}]


def test_data_validate_on_sharegpt_alpaca_and_renamed_files(write_jsonl, capsys):
    sharegpt, alpaca = write_jsonl("sg.jsonl", SHAREGPT), write_jsonl("alpaca.jsonl", ALPACA)
    pairs = write_jsonl("pairs.jsonl", PAIRS)
    assert main(["validate", sharegpt, alpaca]) == 0
    assert main(["validate", pairs, "--columns", "prompt=question,chosen=better,rejected=worse"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        f"{sharegpt}: 1 rows read as sharegpt, 1 records, 0 problems",
        f"{alpaca}: 2 rows read as alpaca, 2 records, 0 problems",
        f"{pairs}: 2 rows read as explicit, 2 records, 0 problems",
    ]
    assert main(["validate", pairs, "--columns", "prompt=question,chosen=better"]) == 1
    out, err = capsys.readouterr()
    assert err == f"{pairs}: cannot read: cannot tell the preference format from the columns " \
                  "['chosen', 'prompt', 'worse']; expected one of: " + err.split("expected one of: ", 1)[1]
    assert main(["validate", pairs, "--columns", "prompt=question,chosen=missing_col,rejected=worse"]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"{pairs}:{n}: missing_col: missing; the column mapping chosen=missing_col reads 'chosen' from it" for n in (1, 2)
    ]
    assert out == f"{pairs}: 2 rows read as unknown, 0 records, 2 problems\n"


def test_a_bad_columns_flag_is_a_usage_error(write_jsonl, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", write_jsonl("p.jsonl", PAIRS), "--columns", "promt=question"])
    assert exit_info.value.code == 2
    assert "--columns: unknown column 'promt'" in capsys.readouterr().err


def test_sft_and_rm_read_the_new_formats_through_a_data_section(write_jsonl, tokenizer):
    sharegpt, alpaca = write_jsonl("sg.jsonl", SHAREGPT), write_jsonl("alpaca.jsonl", ALPACA)
    parts, report = read_splits(DataSection(train=[sharegpt], eval=[alpaca]), "sft", tokenizer, max_response_tokens=64)
    assert [(r.prompt, r.response) for r in parts["train"]] == [([user("Hi")], "Hello.")]
    assert [(r.prompt, r.response) for r in parts["eval"]] == [([user("Add.\n\n2 + 2")], "4"), ([user("Hi.")], "Hello.")]
    assert (report["sources"][sharegpt]["format"], report["sources"][alpaca]["format"]) == ("sharegpt", "alpaca")
    pairs = write_jsonl("pairs.jsonl", PAIRS)
    parts, report = read_splits(DataSection(train=[pairs], columns=RENAMED), "preference", tokenizer,
                                max_response_tokens=64)
    assert [(r.prompt, r.chosen, r.rejected) for r in parts["train"]] == [
        ([user("Hi")], "Hello.", "Go."), ([user("Bye")], "Bye!", "No."),
    ]
    assert report["sources"][pairs]["format"] == "explicit"
    with pytest.raises(DataValidationError) as info:
        read_splits(DataSection(train=[pairs], columns={**RENAMED, "margin": "level"}), "preference", tokenizer)
    assert [str(p) for p in info.value.problems] == [
        f"{pairs}:{n}: level: missing; the column mapping margin=level reads 'margin' from it" for n in (1, 2)
    ]


def test_ppo_prompts_read_through_the_mapping(write_jsonl, tokenizer):
    from rayrlhf.config.ppo import PromptDataSection

    path = write_jsonl("q.jsonl", [{"q": "Add.", "ctx": "1 + 1", "answer": "2"}])
    data = PromptDataSection(train=[path], columns={"instruction": "q", "input": "ctx"})
    parts, report = read_splits(data, "prompt", tokenizer)
    assert [(r.prompt, r.meta) for r in parts["train"]] == [([user("Add.\n\n1 + 1")], {"answer": "2"})]
    assert report["sources"][path]["format"] == "alpaca"
