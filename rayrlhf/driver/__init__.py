"""The loops that coordinate a run: stages, the pipeline of stages."""
