"""rayrlhf: the whole alignment recipe (SFT, reward models, rejection sampling, PPO) on Ray."""
__version__ = "0.1.0"
