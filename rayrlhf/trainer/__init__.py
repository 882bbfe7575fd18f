"""Training stages that run in Ray Train workers: the shared loop, SFT, reward models."""
