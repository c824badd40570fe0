"""The shared training library: config, models, input pipeline, optimizers,
parallelism, the train/eval loop with checkpoints and metrics, and plots."""
