"""Training configuration: one dataclass, presets per task, CLI overrides."""

import argparse
import dataclasses
import typing


@dataclasses.dataclass
class Config:
  """Everything a training run needs. Presets live in ``examples.configs``."""

  # Data.
  dataset: str = 'cifar10'  # a tfds name, or 'digits' (scikit-learn, offline)
  train_split: str = 'train'
  eval_split: str = 'test'
  data_dir: str | None = None  # tfds prepared data (ArrayRecord)
  mock_data: bool = False  # tfds.testing.mock_data: no files needed
  mock_num_examples: int = 256
  image_size: int = 32
  augment: bool = True  # random crop (pad 4) + horizontal flip
  # Model.
  model: str = 'resnet18_cifar'  # see examples.lib.models.MODELS
  width: int = 64  # base channel width (the paper's ResNet-18: 64)
  num_classes: int = 10
  # Optimizer.
  optimizer: str = 'lambc'  # lambc | lamb | adamw | sgd | larc
  learning_rate: float = 1e-2
  schedule: str = 'cosine'  # cosine | step | constant
  warmup_epochs: float = 0.0
  step_decay_at: tuple[float, ...] = (0.5, 0.75)  # fractions of training
  step_decay_factor: float = 0.1
  weight_decay: float = 0.0
  min_trust_ratio: float = 0.0
  max_trust_ratio: float | None = 1.0  # None: no upper bound (LAMB)
  bound_policy: str = 'fixed'  # fixed | dynamic | running
  policy_gamma: float = 1e-3  # dynamic_bounds
  policy_n_std: float = 3.0  # running_stat_bounds
  policy_decay: float = 0.99
  policy_warmup_steps: int = 20
  exclude_bias_and_norm: bool = True  # masks for decay and adaptation
  momentum: float = 0.9  # sgd, larc
  # Schedule of the run.
  global_batch_size: int = 1000
  num_epochs: float = 80.0
  num_train_steps: int | None = None  # overrides num_epochs
  eval_every_steps: int = 0  # 0: at the end of each epoch
  log_every_steps: int = 50
  checkpoint_every_steps: int = 0  # 0: no checkpoints
  stop_after_steps: int | None = None  # stop early (simulates a kill)
  seed: int = 0
  # Parallelism.
  parallel: str = 'jit'  # jit | pmap | shard_map | fsdp
  progress: bool = True

  def replace(self, **kwargs) -> 'Config':
    return dataclasses.replace(self, **kwargs)


def _parse(field: dataclasses.Field, text: str):
  hint = typing.get_type_hints(Config)[field.name]
  if text.lower() == 'none':
    return None
  if typing.get_origin(hint) is tuple:
    return tuple(float(x) for x in text.split(',') if x)
  args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
  kind = args[0]
  if kind is bool:
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'{field.name} must be true or false, got {text!r}')
    return text.lower() in ('true', '1')
  return kind(text)


def apply_overrides(config: Config, overrides: list[str]) -> Config:
  """Applies ``key=value`` strings, with a clear error for unknown keys."""
  fields = {f.name: f for f in dataclasses.fields(Config)}
  changes = {}
  for item in overrides:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'override {item!r} must look like key=value')
    if key not in fields:
      raise ValueError(f'unknown config key {key!r}; known: '
                       f'{", ".join(sorted(fields))}')
    changes[key] = _parse(fields[key], value)
  return config.replace(**changes)


def cli(preset: Config, description: str, argv=None) -> tuple[Config, str]:
  """``--workdir DIR [--set key=value ...]`` on top of a preset."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--workdir', required=True,
                      help='checkpoints, metrics.jsonl and plots go here')
  parser.add_argument('--set', dest='overrides', action='append', default=[],
                      metavar='KEY=VALUE', help='override a config field')
  args = parser.parse_args(argv)
  return apply_overrides(preset, args.overrides), args.workdir
