"""CIFAR-10, ResNet-18 (the LAMBC paper's Sec. 4.1-4.2, Table 1)."""

from examples.lib.config import Config


def get_config() -> Config:
  return Config(dataset='cifar10', train_split='train', eval_split='test',
                model='resnet18_cifar', width=64,
                num_classes=10, optimizer='lambc', learning_rate=1e-2,
                schedule='cosine', warmup_epochs=0.0, weight_decay=0.0,
                max_trust_ratio=1.0, global_batch_size=1000, num_epochs=80,
                exclude_bias_and_norm=False,  # the paper adapts every layer
                log_every_steps=10, checkpoint_every_steps=200)
