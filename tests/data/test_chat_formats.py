"""ShareGPT ``conversations`` and Alpaca ``instruction``/``input``/``output`` rows, read as SFT,
prompts and preferences, with their problems."""
from rayrlhf.data.formats import read_records
from rayrlhf.data.schema import PreferenceRecord, PromptRecord, Source, SFTRecord


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


CONVERSATION = [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "Hi"},
    {"from": "gpt", "value": "Hello."},
    {"from": "human", "value": "Bye"},
    {"from": "gpt", "value": "Bye now."},
]


def test_sharegpt_sft_maps_the_roles_and_takes_the_last_gpt_turn(write_jsonl):
    path = write_jsonl("sg.jsonl", [{"conversations": CONVERSATION, "id": "a1"}])
    result = read_records(path, "auto")
    assert (result.kind, result.format, result.problems) == ("sft", "sharegpt", [])
    assert result.records == [SFTRecord(
        [system("Be brief."), user("Hi"), assistant("Hello."), user("Bye")], "Bye now.", Source(path, 1), {"id": "a1"},
    )]


def test_sharegpt_turns_may_use_role_and_content_keys(write_jsonl):
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    result = read_records(write_jsonl("sg.jsonl", [{"conversations": turns}]), "sft")
    assert result.format == "sharegpt"
    assert [(r.prompt, r.response) for r in result.records] == [([user("Hi")], "Hello.")]


def test_sharegpt_prompts_end_with_the_human_turn(write_jsonl):
    rows = [
        {"conversations": CONVERSATION[:4]},  # ends with the human: all of it
        {"conversations": CONVERSATION},  # ends with gpt: every turn before the last gpt turn
    ]
    result = read_records(write_jsonl("sg.jsonl", rows), "auto")
    assert (result.kind, result.format, result.problems) == ("prompt", "sharegpt", [])
    expected = [system("Be brief."), user("Hi"), assistant("Hello."), user("Bye")]
    assert [r.prompt for r in result.records] == [expected, expected]
    assert all(isinstance(r, PromptRecord) for r in result.records)


def test_sharegpt_preferences_give_the_conversation_as_prompt(write_jsonl):
    row = {"conversations": CONVERSATION[:2], "chosen": {"from": "gpt", "value": "Hello!"},
           "rejected": {"from": "gpt", "value": "Go away."}, "margin": "better"}
    path = write_jsonl("sg.jsonl", [row, dict(row, chosen="Hey.", rejected=[{"from": "gpt", "value": "No."}])])
    result = read_records(path, "auto")
    assert (result.kind, result.format, result.problems) == ("preference", "sharegpt", [])
    prompt = [system("Be brief."), user("Hi")]
    assert result.records == [
        PreferenceRecord(prompt, "Hello!", "Go away.", "better", None, Source(path, 1), {}),
        PreferenceRecord(prompt, "Hey.", "No.", "better", None, Source(path, 2), {}),
    ]
    prompts = read_records(path, "prompt")
    assert (prompts.format, [r.prompt for r in prompts.records]) == ("sharegpt", [prompt, prompt])
    assert prompts.records[0].meta == {}


def test_sharegpt_problems_name_the_field_and_the_value(write_jsonl):
    good = {"conversations": CONVERSATION[1:3]}
    rows = [
        good,
        {"conversations": [{"from": "bot", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": 3}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "Hello?"}]},
        {"conversations": []},
        {"conversations": "Hi"},
        {"conversations": [{"value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
    ]
    path = write_jsonl("sg.jsonl", rows)
    result = read_records(path, "sft")
    assert len(result.records) == 1
    assert [str(p) for p in result.problems] == [
        f"{path}:2: conversations[0].from: unknown role 'bot'; expected one of human, user, gpt, assistant, system",
        f"{path}:3: conversations[1].value: expected a string, found number 3",
        f"{path}:4: conversations[1].value: missing; expected the turn's text as a string",
        f"{path}:5: conversations[1].role: the last message must be the assistant's reply, found 'user'",
        f"{path}:6: conversations: empty list; expected at least one turn",
        f'{path}:7: conversations: expected a list of turns like [{{"from": "human", "value": "..."}}], '
        "found string 'Hi'",
        f"{path}:8: conversations[0].from: missing; expected one of human, user, gpt, assistant, system",
    ]


def test_sharegpt_preference_reply_must_be_the_assistants(write_jsonl):
    row = {"conversations": CONVERSATION[1:2], "chosen": {"from": "human", "value": "Hi"}, "rejected": "No."}
    path = write_jsonl("sg.jsonl", [row])
    result = read_records(path, "preference")
    assert [str(p) for p in result.problems] == [
        f"{path}:1: chosen.from: expected the assistant's turn (gpt), found 'human'",
    ]


def test_alpaca_sft_joins_instruction_and_input(write_jsonl):
    rows = [
        {"instruction": "Add the numbers.", "input": "2 + 2", "output": "4"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!", "system": "Be polite."},
        {"instruction": "Say bye.", "output": "Bye!", "source": "x"},
    ]
    path = write_jsonl("alpaca.jsonl", rows)
    result = read_records(path, "auto")
    assert (result.kind, result.format, result.problems) == ("sft", "alpaca", [])
    assert result.records == [
        SFTRecord([user("Add the numbers.\n\n2 + 2")], "4", Source(path, 1), {}),
        SFTRecord([system("Be polite."), user("Say hi.")], "Hi!", Source(path, 2), {}),
        SFTRecord([user("Say bye.")], "Bye!", Source(path, 3), {"source": "x"}),
    ]


def test_alpaca_prompts_keep_the_output_in_meta(write_jsonl):
    path = write_jsonl("alpaca.jsonl", [{"instruction": "Add.", "input": "1 + 1", "output": "2"}, {"instruction": "Hi."}])
    result = read_records(path, "prompt")
    assert (result.format, result.problems) == ("alpaca", [])
    assert result.records == [
        PromptRecord([user("Add.\n\n1 + 1")], Source(path, 1), {"output": "2"}),
        PromptRecord([user("Hi.")], Source(path, 2), {}),
    ]
    assert read_records(write_jsonl("only.jsonl", [{"instruction": "Hi."}]), "auto").kind == "prompt"


def test_alpaca_problems(write_jsonl):
    rows = [
        {"instruction": "Hi.", "input": 3, "output": "Hello."},
        {"instruction": "Hi.", "output": None},
        {"instruction": ["Hi."], "output": "Hello."},
        {"instruction": "Hi.", "output": "Hello.", "system": 1},
    ]
    path = write_jsonl("alpaca.jsonl", rows)
    result = read_records(path, "sft", format="alpaca")
    assert result.records == []
    assert [str(p) for p in result.problems] == [
        f"{path}:1: input: expected a string, found number 3",
        f"{path}:2: output: missing or null; format 'alpaca' needs the fields instruction, output",
        f"{path}:3: instruction: expected a string, found a list of 1 item",
        f"{path}:4: system: expected a string, found number 1",
    ]


def test_sharegpt_turns_under_messages_say_how_to_read_them(write_jsonl):
    row = {"messages": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}
    path = write_jsonl("m.jsonl", [row])
    assert [str(p) for p in read_records(path, "sft").problems] == [
        f"{path}:1: messages[0].role: missing; expected one of system, user, assistant (ShareGPT-style 'from'/'value' "
        "turns are read from a 'conversations' column, format 'sharegpt': data.columns: {conversations: messages})"
    ]
    result = read_records(path, "auto", columns={"conversations": "messages"})
    assert (result.format, [(r.prompt, r.response) for r in result.records]) == ("sharegpt", [([user("Hi")], "Yo")])
