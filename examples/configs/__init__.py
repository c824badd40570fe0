"""Presets, one per task (the paper's settings where it gives them)."""

from examples.configs.cifar10 import get_config as cifar10
from examples.configs.digits import get_config as digits
from examples.configs.imagenet64 import get_config as imagenet64
from examples.configs.lm import get_config as lm

PRESETS = {'cifar10': cifar10, 'imagenet64': imagenet64, 'digits': digits,
           'lm': lm}
