"""Typed configuration: dataclass trees loaded from YAML with dotted overrides."""
from rayrlhf.config.loader import ConfigError, load_config, save_config, to_dict
from rayrlhf.config.schema import (
    DataSection,
    DPOConfig,
    DPOSection,
    ModelSection,
    RewardSection,
    RMConfig,
    RRHFConfig,
    RRHFSection,
    RunSection,
    ScalingSection,
    SFTConfig,
    TrainSection,
    SUPERVISED_COMMANDS,
)

__all__ = [
    "ConfigError", "load_config", "save_config", "to_dict",
    "DataSection", "DPOConfig", "DPOSection", "ModelSection", "RewardSection", "RMConfig", "RRHFConfig", "RRHFSection", "RunSection",
    "ScalingSection", "SFTConfig", "SUPERVISED_COMMANDS", "TrainSection",
]
