"""ImageNet 64x64 (tfds imagenet_resized/64x64), the paper's Sec. 4.3."""

from examples.lib.config import Config


def get_config() -> Config:
  return Config(dataset='imagenet_resized/64x64', train_split='train',
                eval_split='validation', model='resnet18_64',
                width=64, num_classes=1000, optimizer='lambc',
                learning_rate=1e-2, schedule='cosine', warmup_epochs=1.0,
                weight_decay=0.0, max_trust_ratio=1.0, global_batch_size=400,
                exclude_bias_and_norm=False,  # the paper adapts every layer
                num_epochs=40, log_every_steps=50, checkpoint_every_steps=1000)
