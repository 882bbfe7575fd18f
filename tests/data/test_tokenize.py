"""Token ids checked against the tokenizer piece by piece; masks and padding checked by hand."""
import copy
import math

import torch

from rayrlhf.data.schema import PreferenceRecord, SFTRecord
from rayrlhf.data.tokenize import (
    collate_pairs,
    collate_sft,
    encode_pair,
    encode_sft,
    render_prompt,
)

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
RENDERED = "<|system|>\nBe brief.\n<|user|>\nCapital of France?\n<|assistant|>\n"


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_render_prompt_is_the_chat_template_with_generation_prompt(tokenizer):
    got = render_prompt(tokenizer, PROMPT)
    assert got == ids(tokenizer, RENDERED)
    assert tokenizer.decode(got) == RENDERED


def test_render_prompt_without_chat_template_uses_hh_layout(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    got = render_prompt(plain, PROMPT)
    assert got == plain("Be brief.\n\nHuman: Capital of France?\n\nAssistant:").input_ids


def test_encode_sft_masks_exactly_the_response_and_eos(tokenizer):
    record = SFTRecord(PROMPT, "Paris.")
    out = encode_sft(tokenizer, record, max_len=128)
    prompt_ids, response_ids = ids(tokenizer, RENDERED), ids(tokenizer, "Paris.")
    eos = tokenizer.eos_token_id
    assert out["input_ids"] == prompt_ids + response_ids + [eos]
    assert out["loss_mask"] == [0] * len(prompt_ids) + [1] * (len(response_ids) + 1)
    learned = [t for t, m in zip(out["input_ids"], out["loss_mask"]) if m]
    assert tokenizer.decode(learned) == "Paris.</s>"


def test_encode_sft_cuts_the_prompt_from_the_left(tokenizer):
    record = SFTRecord(PROMPT, "Paris.")
    prompt_ids = ids(tokenizer, RENDERED)
    response = ids(tokenizer, "Paris.") + [tokenizer.eos_token_id]
    stats = {}
    out = encode_sft(tokenizer, record, max_len=len(response) + 3, stats=stats)
    assert out["input_ids"] == prompt_ids[-3:] + response
    assert out["loss_mask"] == [0, 0, 0] + [1] * len(response)
    assert stats == {"prompt_truncated": 1}


def test_encode_sft_cuts_a_response_that_alone_does_not_fit(tokenizer):
    text = "The cat sat on the mat and looked at the dog."
    response = ids(tokenizer, text)
    prompt_ids = ids(tokenizer, RENDERED)
    max_len = 10
    assert len(response) + 1 > max_len
    stats = {}
    out = encode_sft(tokenizer, SFTRecord(PROMPT, text), max_len=max_len, stats=stats)
    # half the budget keeps the end of the prompt; the response is cut and loses its EOS
    assert out["input_ids"] == prompt_ids[-5:] + response[:5]
    assert out["loss_mask"] == [0] * 5 + [1] * 5
    assert tokenizer.eos_token_id not in out["input_ids"]
    assert stats == {"prompt_truncated": 1, "response_truncated": 1}


def test_encode_sft_untouched_when_it_fits(tokenizer):
    stats = {}
    out = encode_sft(tokenizer, SFTRecord(PROMPT, "Paris."), max_len=10_000, stats=stats)
    assert len(out["input_ids"]) == len(ids(tokenizer, RENDERED)) + len(ids(tokenizer, "Paris.")) + 1
    assert stats == {}


def test_encode_pair_shares_the_prompt_and_reads_margins(tokenizer):
    record = PreferenceRecord(PROMPT, "Paris.", "Lyon, I think.", margin_label="slightly better")
    out = encode_pair(tokenizer, record, max_len=128)
    prompt_ids, eos = ids(tokenizer, RENDERED), tokenizer.eos_token_id
    assert out["chosen_ids"] == prompt_ids + ids(tokenizer, "Paris.") + [eos]
    assert out["rejected_ids"] == prompt_ids + ids(tokenizer, "Lyon, I think.") + [eos]
    assert out["rejected_loss_mask"] == [0] * len(prompt_ids) + [1] * (len(ids(tokenizer, "Lyon, I think.")) + 1)
    assert (out["margin"], out["margin_label"]) == (1.0 / 3.0, "slightly better")
    record.margin = 0.7
    assert encode_pair(tokenizer, record, max_len=128)["margin"] == 0.7
    assert math.isnan(encode_pair(tokenizer, PreferenceRecord(PROMPT, "a", "b"), max_len=128)["margin"])


def test_encode_pair_cuts_both_sides_to_the_same_prompt(tokenizer):
    record = PreferenceRecord(PROMPT, "Paris.", "Lyon, I think.")
    longest = len(ids(tokenizer, "Lyon, I think.")) + 1
    out = encode_pair(tokenizer, record, max_len=longest + 2)
    tail = ids(tokenizer, RENDERED)[-2:]
    assert out["chosen_ids"][:2] == out["rejected_ids"][:2] == tail
    assert len(out["rejected_ids"]) == longest + 2


def test_collate_sft_pads_right():
    batch = [{"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]}, {"input_ids": [8], "loss_mask": [1]}]
    out = collate_sft(batch, pad_id=0)
    assert torch.equal(out["input_ids"], torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert torch.equal(out["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert torch.equal(out["loss_mask"], torch.tensor([[0, 1, 1], [1, 0, 0]]))
    assert all(t.dtype == torch.long for t in out.values())


def test_collate_pairs_stacks_chosen_then_rejected():
    batch = [
        {"chosen_ids": [1, 2], "rejected_ids": [1, 3, 4], "chosen_loss_mask": [0, 1],
         "rejected_loss_mask": [0, 1, 1], "margin": 0.5, "margin_label": None},
        {"chosen_ids": [5], "rejected_ids": [6, 7], "chosen_loss_mask": [1],
         "rejected_loss_mask": [1, 1], "margin": float("nan"), "margin_label": "better"},
    ]
    out = collate_pairs(batch, pad_id=9)
    assert torch.equal(out["input_ids"], torch.tensor([[1, 2, 9], [5, 9, 9], [1, 3, 4], [6, 7, 9]]))
    assert torch.equal(out["attention_mask"], torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]]))
    assert torch.equal(out["loss_mask"], torch.tensor([[0, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 0]]))
    assert torch.equal(out["margin"], torch.tensor([0.5, 0.0]))
    assert out["margin"].dtype == torch.float32
    assert out["margin_label"] == [None, "better"]


def test_encode_then_collate(tokenizer):
    records = [SFTRecord(PROMPT, "Paris."), SFTRecord([{"role": "user", "content": "Hi"}], "Hello there")]
    batch = [encode_sft(tokenizer, r, max_len=64) for r in records]
    out = collate_sft(batch, tokenizer.pad_token_id)
    lengths = [len(b["input_ids"]) for b in batch]
    assert out["input_ids"].shape == (2, max(lengths))
    assert out["attention_mask"].sum(1).tolist() == lengths
    assert out["loss_mask"].sum(1).tolist() == [sum(b["loss_mask"]) for b in batch]
