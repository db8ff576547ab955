"""Training: options, the loss, the loop, checkpoints and the run folder."""
