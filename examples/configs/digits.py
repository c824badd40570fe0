"""scikit-learn digits: the offline demo (real data, no download)."""

from examples.lib.config import Config


def get_config() -> Config:
  return Config(dataset='digits', train_split='train', eval_split='test',
                model='small_cnn', width=16, num_classes=10,
                optimizer='lambc', learning_rate=3e-2, schedule='cosine',
                warmup_epochs=1.0, weight_decay=1e-4, max_trust_ratio=1.0,
                augment=False, global_batch_size=256, num_epochs=40,
                exclude_bias_and_norm=False,  # as the LAMBC paper
                log_every_steps=5, checkpoint_every_steps=0)
