import pytest

from rayrlhf.config import ConfigError, RMConfig, SFTConfig, load_config, save_config
from rayrlhf.config.loader import parse_override, read_yaml


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_yaml_and_dotted_overrides(tmp_path):
    path = _write(tmp_path, """
model: {name_or_path: m}
data: {train: [a.jsonl]}
train: {lr: 0.001, epochs: 2}
""")
    cfg = load_config(SFTConfig, path, ["train.lr=1e-4", "scaling.num_workers=2", "data.eval=[b.jsonl]"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert cfg.scaling.num_workers == 2
    assert cfg.data.eval == ["b.jsonl"]
    assert cfg.model.trust_remote_code is False  # safe default


def test_every_problem_reported_with_its_path(tmp_path):
    path = _write(tmp_path, """
model: {name_or_path: m, dtyp: float32}
data: {train: [a.jsonl], eval_fraction: 1.5}
train: {lr: fast, global_batch_size: 8}
""")
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, path)
    msg = str(e.value)
    assert "model.dtyp: unknown key; did you mean 'dtype'?" in msg
    assert "train.lr: expected a number, got the string 'fast'" in msg
    assert path in msg
    assert len(e.value.problems) == 2  # validate() runs only once the types are right


def test_validate_messages_say_what_to_change(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(RMConfig, data={"data": {"train": [], "eval_fraction": 1.5},
                                    "reward": {"margin_values": {"huge": 3.0}}})
    problems = e.value.problems
    assert "model.name_or_path: required: a Hugging Face model name or a local model folder" in problems
    assert "data.train: required: at least one file, folder or dataset name" in problems
    assert "data.eval_fraction: must be in [0, 1), got 1.5" in problems
    assert any(p.startswith("reward.margin_values: unknown level(s) ['huge']") for p in problems)


def test_literal_and_bool_types():
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, data={"model": {"name_or_path": "m", "dtype": "fp8", "trust_remote_code": "yes"},
                                     "data": {"train": ["x"]}})
    msg = str(e.value)
    assert "model.dtype: must be one of 'float32', 'bfloat16', 'float16', got 'fp8'" in msg
    assert "model.trust_remote_code: expected true or false, got the string 'yes'" in msg


def test_parse_override():
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=true") == (["a"], True)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.lr")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(RMConfig, data={"model": {"name_or_path": "m"}, "data": {"train": ["x"]},
                                      "reward": {"name": "safety"}})
    out = tmp_path / "saved.yaml"
    save_config(cfg, str(out))
    again = load_config(RMConfig, str(out))
    assert again == cfg
    assert read_yaml(str(out))["reward"]["margin_values"]["better"] == pytest.approx(2 / 3)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(SFTConfig, str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(SFTConfig, _write(tmp_path, "model: {name_or_path: [\n"))


def test_a_moved_key_says_where_it_lives_now(tmp_path):
    """The fleet's size has one key, resources.rollout.num_workers; the old one is refused
    with the line to write instead, before anything starts."""
    from rayrlhf.config.ppo import PPOConfig

    path = _write(tmp_path, """
policy: {name_or_path: m}
critic: {name_or_path: c}
data: {train: [a.jsonl]}
rollout: {backend: hf, num_workers: 3}
""")
    with pytest.raises(ConfigError) as e:
        load_config(PPOConfig, path)
    assert ("rollout.num_workers: moved to resources.rollout.num_workers; set it there, e.g. "
            "resources: {rollout: {num_workers: 3}}") in e.value.problems
