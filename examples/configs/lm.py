"""A byte-level transformer LM on the offline standard-library corpus."""

from examples.lib.config import Config


def get_config() -> Config:
  # About 1.2M training bytes (300 steps of 64 x 64): a minute on 2 cores.
  return Config(dataset='stdlib', train_split='train', eval_split='test',
                model='transformer_tiny', seq_len=64, eval_examples=1024,
                augment=False, optimizer='lambc', learning_rate=1e-2,
                schedule='cosine', warmup_fraction=0.1, weight_decay=0.01,
                max_trust_ratio=1.0, exclude_bias_and_norm=True,
                global_batch_size=64, num_train_steps=300,
                eval_every_steps=100, log_every_steps=10,
                checkpoint_every_steps=100)
