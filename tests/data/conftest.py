import json

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "Hello there, how are you today?",
    "The cat sat on the mat and looked at the dog.",
    "<|system|>\n<|user|>\n<|assistant|>\n",
    "Paris is the capital of France. Water boils at 100 degrees.",
]


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE with bos/eos/pad and a small chat template, trained in well under a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(name, rows) -> path; a row that is bytes or str is written as the line itself."""

    def write(name, rows):
        path = tmp_path / name
        with open(path, "wb") as f:
            for row in rows:
                if isinstance(row, bytes):
                    f.write(row)
                elif isinstance(row, str):
                    f.write(row.encode())
                else:
                    f.write(json.dumps(row).encode())
                f.write(b"\n")
        return str(path)

    return write
