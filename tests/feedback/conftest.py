import pytest


@pytest.fixture(scope="module")
def judge_world(tmp_path_factory):
    """A tiny toyworld: its preference files, tokenizer and an untrained base model as judge."""
    from tests.driver.tiny import tiny_world

    return tiny_world(tmp_path_factory.mktemp("judge_world"))


@pytest.fixture(scope="module")
def hf_judge(judge_world):
    from rayrlhf.rollout.config import RolloutSection
    from rayrlhf.rollout.hf_backend import HFBackend

    return HFBackend(f"{judge_world}/base_model", cfg=RolloutSection(backend="hf", max_new_tokens=6, seed=3))
