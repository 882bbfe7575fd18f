"""Every rayrlhf command that takes a config, and the dataclass its config is loaded into."""
from __future__ import annotations

COMMANDS = ("pipeline", "sft", "rm", "dpo", "rrhf", "ppo", "rs", "best-of-k", "label", "revise", "compare",
            "toyworld")
"""Commands run from one YAML config (``rayrlhf <command> --config F [overrides]``)."""


def config_class(command: str) -> type:
    """The config dataclass of ``command`` (one of COMMANDS); KeyError for another name."""
    if command in ("sft", "rm", "dpo", "rrhf"):
        from rayrlhf.config.schema import DPOConfig, RMConfig, RRHFConfig, SFTConfig

        return {"sft": SFTConfig, "rm": RMConfig, "dpo": DPOConfig, "rrhf": RRHFConfig}[command]
    if command == "ppo":
        from rayrlhf.config.ppo import PPOConfig

        return PPOConfig
    if command in ("rs", "best-of-k"):
        from rayrlhf.config.rs import RSConfig

        return RSConfig
    if command == "label":
        from rayrlhf.config.label import LabelConfig

        return LabelConfig
    if command == "revise":
        from rayrlhf.config.revise import ReviseConfig

        return ReviseConfig
    if command == "pipeline":
        from rayrlhf.driver.pipeline import PipelineConfig

        return PipelineConfig
    if command == "compare":
        from rayrlhf.driver.compare import CompareConfig

        return CompareConfig
    if command == "toyworld":
        from rayrlhf.driver.toyworld_stage import ToyworldConfig

        return ToyworldConfig
    raise KeyError(f"{command!r}: not a command with a config (commands: {', '.join(COMMANDS)})")
