"""Each reader on rows with the exact columns of the dataset it is named after."""
import pytest

from rayrlhf.data.formats import read_records
from rayrlhf.data.schema import PreferenceRecord, PromptRecord, Source, SFTRecord
from rayrlhf.data.validate import validate_records

# Anthropic/hh-rlhf: two transcripts sharing every turn but the last reply, which here share a
# prefix ("I ") so a naive character split would cut inside the reply.
HH_CHOSEN = (
    "\n\nHuman: What are some cuss words in english?"
    "\n\nAssistant: Here's an incomplete list."
    "\n\nHuman: What's your favorite one?"
    "\n\nAssistant: I haven't even thought about it."
)
HH_REJECTED = HH_CHOSEN.rsplit("\n\nAssistant:", 1)[0] + "\n\nAssistant: I like Ass."


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_hh_rlhf_multi_turn_splits_at_the_last_shared_assistant_turn(write_jsonl):
    path = write_jsonl("hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    result = read_records(path, "preference")
    assert (result.format, result.n_rows, result.problems) == ("hh-rlhf", 1, [])
    (r,) = result.records
    assert r.prompt == [
        user("What are some cuss words in english?"),
        assistant("Here's an incomplete list."),
        user("What's your favorite one?"),
    ]
    assert r.chosen == "I haven't even thought about it."
    assert r.rejected == "I like Ass."
    assert r.source == Source(path, 1)
    assert (r.margin_label, r.margin, r.meta) == (None, None, {})


def test_hh_rlhf_quirks_are_problems_not_crashes(write_jsonl):
    prefix = "\n\nHuman: Hi\n\nAssistant:"
    rows = [
        {"chosen": HH_CHOSEN, "rejected": HH_CHOSEN},  # identical transcripts
        {"chosen": prefix, "rejected": prefix + " Hello!"},  # empty final reply
        {"chosen": "Note: rude." + prefix + " Yo", "rejected": "Note: rude." + prefix + " Hey"},
        # differ in an earlier reply, so each "response" would hold several turns
        {"chosen": prefix + " A\n\nHuman: B\n\nAssistant: C", "rejected": prefix + " X\n\nHuman: B\n\nAssistant: C"},
        {"chosen": "Human: Hi\n\nAssistant: Yes", "rejected": "Human: Hi\n\nAssistant: No"},  # no leading blank line
    ]
    result = read_records(write_jsonl("hh.jsonl", rows), "preference", format="hh-rlhf")
    assert [(p.line, p.field) for p in result.problems] == [(3, "chosen"), (4, "chosen")]
    assert "text before the first 'Human:' turn ('Note: rude.')" in result.problems[0].reason
    assert "diverge before their final Assistant turn" in result.problems[1].reason
    identical, empty, no_blank = result.records
    assert identical.chosen == identical.rejected == "I haven't even thought about it."
    assert (empty.prompt, empty.chosen, empty.rejected) == ([user("Hi")], "", "Hello!")
    assert (no_blank.prompt, no_blank.chosen, no_blank.rejected) == ([user("Hi")], "Yes", "No")
    semantic = validate_records(result.records, "preference")
    assert [(p.line, p.field) for p in semantic] == [(1, "rejected"), (2, "chosen")]


def test_rm_static(write_jsonl):
    row = {
        "prompt": "\n\nHuman: Can you tell me about the pyramids?\n\nAssistant: Sure.\n\nHuman: Who built them?\n\nAssistant:",
        "response": " Egyptian workers built them.",
        "chosen": " Egyptian workers built them.",
        "rejected": " Aliens.",
    }
    result = read_records(write_jsonl("rm.jsonl", [row]), "preference")
    assert result.format == "rm-static"
    (r,) = result.records
    assert r.prompt == [user("Can you tell me about the pyramids?"), assistant("Sure."), user("Who built them?")]
    assert (r.chosen, r.rejected) == ("Egyptian workers built them.", "Aliens.")
    assert r.meta == {"response": " Egyptian workers built them."}


def test_stack_exchange_paired_response_j_is_chosen(write_jsonl):
    row = {
        "qid": 37,
        "question": "How do I reverse a list in Python?",
        "date": "2011/01/02",
        "metadata": ["https://stackoverflow.com/questions/37", "https://stackoverflow.com", "https://stackoverflow.com/users/1/"],
        "response_j": "Use `lst[::-1]` or `lst.reverse()`.",
        "response_k": "You can't.",
    }
    result = read_records(write_jsonl("se.jsonl", [row]), "preference")
    assert result.format == "stack-exchange-paired"
    (r,) = result.records
    assert r.prompt == [user("How do I reverse a list in Python?")]
    assert (r.chosen, r.rejected) == ("Use `lst[::-1]` or `lst.reverse()`.", "You can't.")
    assert r.meta == {"qid": 37, "date": "2011/01/02", "metadata": row["metadata"]}


def test_explicit_standard_and_conversational(write_jsonl):
    rows = [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "unsafe": False},
        {
            "prompt": [{"role": "system", "content": "Be brief."}, user("What color is the sky?")],
            "chosen": [assistant("Blue.")],
            "rejected": [assistant("Green.")],
        },
    ]
    result = read_records(write_jsonl("trl.jsonl", rows), "preference")
    assert (result.format, result.problems) == ("explicit", [])
    standard, conversational = result.records
    assert (standard.prompt, standard.chosen, standard.rejected) == ([user("The sky is")], " blue.", " green.")
    assert standard.meta == {"unsafe": False}
    assert conversational.prompt == rows[1]["prompt"]
    assert (conversational.chosen, conversational.rejected) == ("Blue.", "Green.")


def test_explicit_rejects_multi_message_or_non_assistant_responses(write_jsonl):
    base = {"prompt": "Hi", "rejected": [assistant("No.")]}
    rows = [
        {**base, "chosen": [assistant("Yes."), assistant("Really.")]},
        {**base, "chosen": [user("Yes.")]},
    ]
    result = read_records(write_jsonl("trl.jsonl", rows), "preference", format="explicit")
    assert [(p.line, p.field) for p in result.problems] == [(1, "chosen"), (2, "chosen[0].role")]
    assert "found 2 messages" in result.problems[0].reason
    assert "expected 'assistant', found 'user'" in result.problems[1].reason


def test_implicit_prompt_is_the_shared_prefix(write_jsonl):
    convo = [user("Hi"), assistant("Hello!"), user("What color is the sky?")]
    rows = [
        {"chosen": convo + [assistant("Blue.")], "rejected": convo + [assistant("Green.")],
         "score_chosen": 8.0, "score_rejected": 2.0},
        {"chosen": convo + [assistant("Blue.")], "rejected": [user("Hey")] + convo[1:] + [assistant("Green.")]},
        {"chosen": convo + [assistant("Blue.")], "rejected": convo},
    ]
    result = read_records(write_jsonl("implicit.jsonl", rows), "preference")
    assert result.format == "implicit"
    (r,) = result.records
    assert (r.prompt, r.chosen, r.rejected) == (convo, "Blue.", "Green.")
    assert r.meta == {"score_chosen": 8.0, "score_rejected": 2.0}
    assert [(p.line, p.field) for p in result.problems] == [(2, "rejected[0]"), (3, "rejected")]


def test_prompt_column_next_to_full_conversations_is_read_as_implicit(write_jsonl):
    # HuggingFaceH4/ultrafeedback_binarized: prompt, chosen and rejected hold the whole conversation
    row = {"prompt": "Hi?", "prompt_id": "a1",
           "chosen": [user("Hi?"), assistant("Hello.")], "rejected": [user("Hi?"), assistant("Bye.")]}
    result = read_records(write_jsonl("h4.jsonl", [row]), "preference")
    assert result.format == "implicit"
    (r,) = result.records
    assert (r.prompt, r.chosen, r.rejected) == ([user("Hi?")], "Hello.", "Bye.")
    assert r.meta == {"prompt": "Hi?", "prompt_id": "a1"}


def test_ranked_k3_gives_three_pairs_best_first(write_jsonl):
    rows = [
        {"prompt": "Name a color.", "responses": ["Blue.", "Dunno.", "Potato."]},
        {"prompt": "Say hi.", "responses": ["Hi!", "No."]},
    ]
    result = read_records(write_jsonl("ranked.jsonl", rows), "preference")
    assert result.format == "ranked"
    pairs = [(r.chosen, r.rejected, r.meta["group"], r.meta["rank_pair"]) for r in result.records]
    assert pairs == [
        ("Blue.", "Dunno.", 0, (0, 1)),
        ("Blue.", "Potato.", 0, (0, 2)),
        ("Dunno.", "Potato.", 0, (1, 2)),
        ("Hi!", "No.", 1, (0, 1)),
    ]
    assert all(r.prompt == [user("Name a color.")] for r in result.records[:3])
    assert result.dropped == {}


def test_ranked_scores_define_the_order_and_ties_give_no_pair(write_jsonl):
    row = {"prompt": [user("Pick one.")], "responses": ["a", "b", "c", "d"], "scores": [1, 3, 2, 3], "annotator": 7}
    result = read_records(write_jsonl("ranked.jsonl", [row]), "preference", format="ranked")
    # best first: b (3), d (3), c (2), a (1); b and d tie
    assert [(r.chosen, r.rejected, r.meta["rank_pair"]) for r in result.records] == [
        ("b", "c", (0, 2)), ("b", "a", (0, 3)), ("d", "c", (1, 2)), ("d", "a", (1, 3)), ("c", "a", (2, 3)),
    ]
    assert result.dropped == {"tie": 1}
    assert result.records[0].meta == {"annotator": 7, "group": 0, "rank_pair": (0, 2)}


@pytest.mark.parametrize(
    "margin, label, number",
    [
        ("significantly better", "significantly better", None),
        ("Significantly Better", "significantly better", None),
        ("slightly_better", "slightly better", None),
        ("Negligibly-Better", "negligibly better", None),
        ("negligibly better / unsure", "negligibly better", None),
        ("Negligibly better/Unsure", "negligibly better", None),
        ("unsure", "negligibly better", None),
        ("better", "better", None),
        (0.5, None, 0.5),
        (2, None, 2.0),
        (None, None, None),
    ],
)
def test_margin_labels_and_numbers(write_jsonl, margin, label, number):
    row = {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go.", "margin": margin}
    (r,) = read_records(write_jsonl("m.jsonl", [row]), "preference").records
    assert (r.margin_label, r.margin) == (label, number)
    assert "margin" not in r.meta


@pytest.mark.parametrize("margin", ["way better", "", True, [1], {"level": "better"}])
def test_unknown_margin_is_a_problem(write_jsonl, margin):
    row = {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go.", "margin": margin}
    result = read_records(write_jsonl("m.jsonl", [row]), "preference")
    assert result.records == []
    assert [(p.line, p.field) for p in result.problems] == [(1, "margin")]
    assert "expected one of 'significantly better'" in result.problems[0].reason


def test_sft_formats(write_jsonl):
    system = {"role": "system", "content": "Be kind."}
    convo = [system, user("Hi"), assistant("Hello!"), user("Capital of France?"), assistant("Paris.")]
    cases = [
        ({"messages": convo, "source": "capybara"}, "messages", convo[:4], "Paris.", {"source": "capybara"}),
        ({"prompt": "TL;DR:", "completion": " A cat sat."}, "prompt-completion", [user("TL;DR:")], " A cat sat.", {}),
        ({"prompt": [user("Hi")], "completion": [assistant("Hello.")]}, "prompt-completion", [user("Hi")], "Hello.", {}),
        ({"prompt": "Hi", "response": "Hello.", "id": 3}, "prompt-response", [user("Hi")], "Hello.", {"id": 3}),
    ]
    for i, (row, fmt, prompt, response, meta) in enumerate(cases):
        result = read_records(write_jsonl(f"sft{i}.jsonl", [row]), "auto")
        assert (result.kind, result.format, result.problems) == ("sft", fmt, [])
        (r,) = result.records
        assert isinstance(r, SFTRecord)
        assert (r.prompt, r.response, r.meta) == (prompt, response, meta)


def test_sft_messages_must_end_with_the_assistant(write_jsonl):
    rows = [{"messages": [user("Hi"), user("Hello?")]}, {"messages": [assistant("Hello!")]}]
    result = read_records(write_jsonl("sft.jsonl", rows), "sft")
    assert [(p.line, p.field) for p in result.problems] == [(1, "messages[1].role"), (2, "messages")]
    assert "the last message must be the assistant's reply, found 'user'" in result.problems[0].reason


def test_prompt_formats(write_jsonl):
    rows = [
        {"prompt": "Tell me a joke.", "unsafe": False},
        {"prompt": [{"role": "system", "content": "Be kind."}, user("Hi")], "unsafe": True},
    ]
    result = read_records(write_jsonl("p.jsonl", rows), "auto")
    assert (result.kind, result.format) == ("prompt", "prompt")
    assert [(r.prompt, r.meta) for r in result.records] == [
        ([user("Tell me a joke.")], {"unsafe": False}),
        (rows[1]["prompt"], {"unsafe": True}),
    ]
    convo = [user("Hi"), assistant("Hello!"), user("Bye?")]
    result = read_records(write_jsonl("m.jsonl", [{"messages": convo}, {"messages": convo + [assistant("Bye.")]}]), "prompt")
    assert result.format == "messages"
    assert [r.prompt for r in result.records] == [convo, convo]
    bad = read_records(write_jsonl("bad.jsonl", [{"prompt": [user("Hi"), assistant("Hello")]}]), "prompt")
    assert [(p.field, p.reason) for p in bad.problems] == [
        ("prompt", "the prompt must end with a user message, found 'assistant' last")
    ]


def test_prompts_of_preference_data(write_jsonl):
    ranked = read_records(write_jsonl("r.jsonl", [{"prompt": "Name a color.", "responses": ["a", "b", "c"]}]), "prompt")
    assert ranked.format == "ranked"
    assert [(type(r), r.prompt, r.meta) for r in ranked.records] == [(PromptRecord, [user("Name a color.")], {"group": 0})]
    rm = {"prompt": "\n\nHuman: Hi\n\nAssistant:", "chosen": " Hello", "rejected": " Go"}
    (r,) = read_records(write_jsonl("rm.jsonl", [rm]), "prompt").records
    assert r.prompt == [user("Hi")]


def test_auto_detection_of_kind(write_jsonl):
    assert read_records(write_jsonl("a.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}]), "auto").kind == "preference"
    assert read_records(write_jsonl("b.jsonl", [{"messages": [user("Hi"), assistant("Yo")]}]), "auto").kind == "sft"
    assert read_records(write_jsonl("c.jsonl", [{"messages": [user("Hi")]}]), "auto").kind == "prompt"


def test_format_detection_skips_broken_first_lines(write_jsonl):
    path = write_jsonl("late.jsonl", ["{oops", "", {"question": "Q?", "response_j": "good", "response_k": "bad"}])
    result = read_records(path, "preference")
    assert (result.format, result.n_rows, len(result.records)) == ("stack-exchange-paired", 2, 1)
    assert [(p.line, p.field) for p in result.problems] == [(1, "<row>")]


def test_undetectable_columns_and_unknown_names_raise(write_jsonl):
    path = write_jsonl("x.jsonl", [{"text": "hello"}])
    with pytest.raises(ValueError, match=r"cannot tell the preference format from the columns \['text'\]"):
        read_records(path, "preference")
    with pytest.raises(ValueError, match="unknown sft format 'hh-rlhf'"):
        read_records(path, "sft", format="hh-rlhf")
    with pytest.raises(ValueError, match="unknown kind 'rm'"):
        read_records(path, "rm")


def test_forced_format_reports_every_row(write_jsonl):
    path = write_jsonl("hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}] * 2)
    result = read_records(path, "preference", format="implicit")
    assert result.records == []
    assert [(p.line, p.field) for p in result.problems] == [(1, "chosen"), (2, "chosen")]
    assert "expected a list of messages" in result.problems[0].reason


def test_limit_counts_rows(write_jsonl):
    rows = [{"prompt": f"p{i}", "responses": ["a", "b", "c"]} for i in range(5)]
    result = read_records(write_jsonl("r.jsonl", rows), "preference", limit=2)
    assert (result.n_rows, len(result.records)) == (2, 6)


def test_records_are_preference_records(write_jsonl):
    (r,) = read_records(write_jsonl("a.jsonl", [{"prompt": "Hi", "chosen": "a", "rejected": "b"}]), "preference").records
    assert isinstance(r, PreferenceRecord)
