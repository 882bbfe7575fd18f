"""W&B gets a run's config, group, job type and entity; TensorBoard its hyper-parameters and
the held-out samples as text."""
import dataclasses
import glob
import importlib.machinery
import os
import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from rayrlhf.config import SFTConfig, load_config
from rayrlhf.driver.ppo import PPODriver
from rayrlhf.driver.rs import RSDriver
from rayrlhf.metrics import MetricsLogger, run_settings

CONFIG = {"run": {"name": "r", "seed": 3, "wandb_project": None}, "train": {"lr": 0.01, "betas": [0.9, 0.95]},
          "ppo": {"kl_coef": 0.05, "whiten": True, "hacking": {}}}
SAMPLES = [{"prompt": "Where is the red key?", "response": "In the | kitchen.\nYes.", "reward": 0.123456,
            "gold_reward": None},
           {"prompt": "Who has the map?", "response": "Anna.", "reward": -1.0, "gold_reward": 2.0}]
TABLE = ("| prompt | response | reward | gold_reward |\n"
         "| --- | --- | --- | --- |\n"
         "| Where is the red key? | In the \\| kitchen.<br>Yes. | 0.1235 |  |\n"
         "| Who has the map? | Anna. | -1 | 2 |")


@pytest.fixture
def wandb_calls(monkeypatch):
    """A stand-in ``wandb`` module: ``init(**kwargs)`` and each run's ``log`` are recorded."""
    calls = []

    class Run:
        def log(self, row, step):
            calls.append(("log", row, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # config validation finds it installed
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return calls


def _events(tb_dir):
    acc = EventAccumulator(tb_dir, size_guidance={"tensors": 0})
    acc.Reload()
    return acc


# -- W&B --------------------------------------------------------------------------------------
def test_a_pipeline_stage_logs_its_config_group_job_type_and_entity_to_wandb(tmp_path, wandb_calls):
    from rayrlhf.driver.pipeline import PipelineConfig, resolve_pipeline
    from rayrlhf.driver.toyworld_stage import run_toyworld
    from rayrlhf.driver.train_stage import prepare
    from rayrlhf.trainer.loop import WorkerInfo, train
    from rayrlhf.trainer.sft import SFTTask

    world = {"n_sft": 40, "n_pref": 8, "n_prompts": 4, "n_eval_prompts": 2, "vocab_size": 300,
             "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 1, "intermediate_size": 64}}
    cfg = load_config(PipelineConfig, data={
        "run": {"output_dir": str(tmp_path), "name": "nightly", "wandb_project": "proj", "wandb_entity": "team"},
        "stages": [{"name": "world", "kind": "toyworld", "config": world},
                   {"name": "tune", "kind": "sft", "config": {
                       "model": {"name_or_path": "{world}/base_model"},
                       "data": {"train": ["{world}/data/sft_train.jsonl"]},
                       "train": {"epochs": 1, "global_batch_size": 16, "per_worker_micro_batch_size": 16,
                                 "eval_every": 100, "checkpoint_every": 100, "log_every": 1}}}]})
    _, run_dir, configs = resolve_pipeline(cfg)
    run_toyworld(configs[0])
    stage = configs[1]
    prep = prepare("sft", stage, resume=False)
    train(SFTTask(stage), stage, prep["train"], prep["eval"], prep["run_dir"], WorkerInfo())
    init = [c[1] for c in wandb_calls if c[0] == "init"]
    assert init == [{"project": "proj", "name": "tune", "dir": os.path.join(run_dir, "tune"),
                     "config": dataclasses.asdict(stage), "job_type": "sft", "entity": "team", "group": "nightly"}]
    assert init[0]["config"]["run"]["wandb_group"] == "nightly" and init[0]["config"]["model"]["name_or_path"] == \
        os.path.join(run_dir, "world", "base_model")
    assert [c[2] for c in wandb_calls if c[0] == "log"] == [1, 2]  # 40 examples, 16 a step: two steps
    assert wandb_calls[-1] == ("finish",)


def test_a_stand_alone_run_has_no_wandb_group(tmp_path, wandb_calls):
    cfg = SFTConfig()
    cfg.run = dataclasses.replace(cfg.run, output_dir=str(tmp_path), name="solo", wandb_project="proj")
    logger = MetricsLogger(str(tmp_path / "solo"), tensorboard=False, echo=False, publish=False,
                           **run_settings(cfg, "rm"))
    logger.close()
    assert wandb_calls[0] == ("init", {"project": "proj", "name": "solo", "dir": str(tmp_path / "solo"),
                                       "config": dataclasses.asdict(cfg), "job_type": "rm", "entity": None,
                                       "group": None})


def test_a_pipeline_group_is_the_pipelines_own_when_it_names_one(tmp_path):
    from rayrlhf.driver.pipeline import PipelineConfig, resolve_pipeline, stage_fingerprint

    cfg = load_config(PipelineConfig, data={
        "run": {"output_dir": str(tmp_path), "name": "p", "wandb_group": "ablation-7", "wandb_entity": "team"},
        "stages": [{"name": "world", "kind": "toyworld"},
                   {"name": "tune", "kind": "sft", "config": {"model": {"name_or_path": "{world}/base_model"},
                                                              "data": {"train": ["{world}/x.jsonl"]}}},
                   {"name": "own", "kind": "sft", "config": {"model": {"name_or_path": "{world}/base_model"},
                                                             "data": {"train": ["{world}/x.jsonl"]},
                                                             "run": {"wandb_group": "mine"}}}]})
    _, _, configs = resolve_pipeline(cfg)
    assert [c.run.wandb_group for c in configs[1:]] == ["ablation-7", "mine"]
    assert [c.run.wandb_entity for c in configs[1:]] == ["team", "team"]
    assert not {"run.wandb_group", "run.wandb_entity"} & set(stage_fingerprint(configs[1]))


# -- TensorBoard ------------------------------------------------------------------------------
def test_tensorboard_gets_the_configs_hparams_once_per_run(tmp_path):
    run_dir = str(tmp_path / "r")
    logger = MetricsLogger(run_dir, echo=False, publish=False, config=CONFIG)
    logger.log(1, {"train/loss": 0.5})
    logger.close()
    content = _events(os.path.join(run_dir, "tensorboard")).PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert {k: v.WhichOneof("kind") for k, v in start.hparams.items()} == {
        "run.name": "string_value", "run.seed": "number_value", "train.lr": "number_value",
        "ppo.kl_coef": "number_value", "ppo.whiten": "number_value"}
    assert (start.hparams["run.name"].string_value, start.hparams["run.seed"].number_value,
            start.hparams["train.lr"].number_value, start.hparams["ppo.kl_coef"].number_value,
            start.hparams["ppo.whiten"].number_value) == ("r", 3.0, 0.01, 0.05, 1.0)
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert sorted(h.name for h in experiment.hparam_infos) == sorted(start.hparams)

    MetricsLogger(run_dir, resume_step=1, echo=False, publish=False, config=CONFIG).close()  # a resumed run
    tags = [v.tag for path in glob.glob(os.path.join(run_dir, "tensorboard", "events.*"))
            for event in EventFileLoader(path).Load() for v in event.summary.value]
    assert tags.count("_hparams_/session_start_info") == 1 and tags.count("train/loss") == 1


def test_samples_go_to_tensorboard_as_a_markdown_table(tmp_path):
    run_dir = str(tmp_path / "r")
    logger = MetricsLogger(run_dir, echo=False, publish=False)
    logger.log_samples(0, SAMPLES[:1])
    logger.log_samples(4, SAMPLES)
    logger.log_samples(5, [])
    logger.close()
    texts = _events(os.path.join(run_dir, "tensorboard")).Tensors("eval/samples/text_summary")
    assert [(t.step, t.tensor_proto.string_val[0].decode()) for t in texts] == [
        (0, "| prompt | response | reward |\n| --- | --- | --- |\n"
            "| Where is the red key? | In the \\| kitchen.<br>Yes. | 0.1235 |"),
        (4, TABLE)]


class Recorder:
    def __init__(self):
        self.calls = []

    def log(self, step, metrics):
        self.calls.append(("log", step))

    def log_samples(self, step, examples):
        self.calls.append(("samples", step, examples))


@pytest.mark.parametrize("end", [PPODriver._end_step, RSDriver._end_round], ids=["ppo", "rs"])
def test_ppo_and_rs_log_the_held_out_samples_when_they_evaluate(end):
    driver = types.SimpleNamespace(samples={"after": SAMPLES}, history={},
                                   hacking=types.SimpleNamespace(state=lambda: {}))
    logger = Recorder()
    end(driver, 3, {"train/loss": 1.0}, {}, logger)
    end(driver, 4, {"train/loss": 1.0, "eval/reward": 0.5}, {}, logger)
    assert logger.calls == [("log", 3), ("log", 4), ("samples", 4, SAMPLES)]
