"""Training: objectives, the trainer, checkpoints, distributed helpers."""
