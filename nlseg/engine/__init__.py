"""Training, evaluation, losses, metrics, checkpoints and distributed helpers."""
