"""Training configuration: one dataclass, presets per task, CLI overrides."""

import argparse
import dataclasses
import inspect
import re
import typing


@dataclasses.dataclass
class Config:
  """Everything a training run needs. Presets live in ``examples.configs``."""

  # Data.
  dataset: str = 'cifar10'  # a tfds name, 'digits' or 'stdlib' (offline)
  train_split: str = 'train'  # tfds split to train on
  eval_split: str = 'test'  # tfds split to evaluate on
  data_dir: str | None = None  # tfds prepared data (ArrayRecord)
  mock_data: bool = False  # tfds.testing.mock_data: no files needed
  mock_num_examples: int = 256  # examples per split with mock_data
  augment: bool = True  # random crop (pad 4) + horizontal flip
  seq_len: int = 64  # language models: bytes per sequence
  eval_examples: int = 0  # evaluate on a fixed sample of N examples (0: all)
  final_eval_splits: str = ''  # comma-separated; evaluated at the end
  final_eval_examples: int = 0  # of each final_eval_splits split (0: all)
  # Model.
  model: str = 'resnet18_cifar'  # CLASSIFIERS or TRANSFORMERS, below
  width: int = 64  # CNNs: base channel width (the paper's ResNet-18: 64)
  num_classes: int = 10  # CNNs: output classes
  # Optimizer.
  optimizer: str = 'lambc'  # lambc | lamb | adamw | sgd | larc
  learning_rate: float = 1e-2  # peak learning rate
  schedule: str = 'cosine'  # cosine | step | constant
  warmup_epochs: float = 0.0  # linear warm-up from 0
  warmup_fraction: float = 0.0  # more warm-up, as a fraction of the steps
  step_decay_at: tuple[float, ...] = (0.5, 0.75)  # fractions of training
  step_decay_factor: float = 0.1  # step schedule multiplier
  weight_decay: float = 0.0  # decoupled weight decay
  min_trust_ratio: float = 0.0  # lower bound of the trust ratio
  max_trust_ratio: float | None = 1.0  # None: no upper bound (LAMB)
  bound_policy: str = 'fixed'  # fixed | dynamic | running
  policy_gamma: float = 1e-3  # dynamic_bounds
  policy_n_std: float = 3.0  # running_stat_bounds
  policy_decay: float = 0.99  # running_stat_bounds EMA decay
  policy_warmup_steps: int = 20  # running_stat_bounds warm-up
  exclude_bias_and_norm: bool = True  # masks for decay and adaptation
  momentum: float = 0.9  # sgd, larc
  adam_eps: float | None = None  # None: adamw's 1e-8, lambc's 1e-6
  adam_b2: float = 0.999  # Adam's second-moment decay (adamw, lamb, lambc)
  clip_grad_norm: float = 0.0  # >0: clip the global gradient norm first
  unbounded_params: str = ''  # leaf names (e.g. scale) with no upper bound
  # Schedule of the run.
  global_batch_size: int = 1000  # examples per step, all devices
  accum_steps: int = 1  # micro-batches per step (gradient accumulation)
  num_epochs: float = 80.0  # length of training
  num_train_steps: int | None = None  # overrides num_epochs
  eval_every_steps: int = 0  # 0: at the end of each epoch
  log_every_steps: int = 50  # metrics.jsonl cadence
  checkpoint_every_steps: int = 0  # 0: no checkpoints
  stop_after_steps: int | None = None  # stop early, no extra checkpoint
  noise_scale: bool = False  # log B_simple (accum_steps > 1; jit, fsdp)
  skip_nonfinite_steps: int = 0  # >0: optax.apply_if_finite with this limit
  seed: int = 0  # model init and data order
  # Parallelism.
  parallel: str = 'jit'  # jit | pmap | shard_map | fsdp
  progress: bool = True  # tqdm progress bar
  plots: bool = True  # curves and heat-maps at the end and on a stop

  @property
  def language_model(self) -> bool:
    """A byte-level LM (a ``TRANSFORMERS`` model) rather than a classifier."""
    return self.model in TRANSFORMERS

  def replace(self, **kwargs) -> 'Config':
    return dataclasses.replace(self, **kwargs)


class ConfigError(ValueError):
  """A bad config: an unknown key, a value of the wrong type or out of range.
  """


# The names the config accepts, each table defined once, here, so that the
# command line checks them before JAX or the data start; the modules that
# build them (optim, parallel, models, transformer) read them from here.
OPTIMIZERS = ('lambc', 'lamb', 'adamw', 'sgd', 'larc')
SCHEDULES = ('cosine', 'step', 'constant')
BOUND_POLICIES = ('fixed', 'dynamic', 'running')
PARALLEL_MODES = ('jit', 'fsdp', 'pmap', 'shard_map')
# Classifiers: a ResNet's stage sizes and first stride, or None for the
# small CNN of the digits demo.
CLASSIFIERS: dict[str, tuple[tuple[int, ...], int] | None] = {
    'resnet18_cifar': ((2, 2, 2, 2), 1), 'resnet18_64': ((2, 2, 2, 2), 2),
    'resnet34_64': ((3, 4, 6, 3), 2), 'small_cnn': None}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes of an ``examples.lib.transformer.TransformerLM``."""

  vocab_size: int = 256
  max_len: int = 128  # longest sequence (learned positions)
  d_model: int = 64
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 256


# 'tiny' (0.2M params) is what a 2-core CPU trains in a minute; 'small'
# (4.9M) suits one GPU. GPT-2 small and BERT-base share their sizes
# (12 x 768, 12 heads, MLP 3072); BERT-base is bidirectional with 512
# positions, this model is causal either way. Byte vocabulary throughout.
TRANSFORMERS = {
    'transformer_tiny': TransformerConfig(),
    'transformer_small': TransformerConfig(
        max_len=256, d_model=256, num_layers=6, num_heads=8, mlp_dim=1024),
    'transformer_gpt2_small': TransformerConfig(
        max_len=1024, d_model=768, num_layers=12, num_heads=12, mlp_dim=3072),
    'transformer_bert_base': TransformerConfig(
        max_len=512, d_model=768, num_layers=12, num_heads=12, mlp_dim=3072),
}


def _one_of(config: Config, key: str, known) -> None:
  value = getattr(config, key)
  if value not in known:
    raise ConfigError(f'{key}={value!r} is not one of: {", ".join(known)}')


def _at_least(config: Config, key: str, low: float, strict: bool = False
              ) -> None:
  value = getattr(config, key)
  if value is not None and (value <= low if strict else value < low):
    raise ConfigError(f'{key}={value!r} must be {">" if strict else ">="} '
                      f'{low:g}')


def validate(config: Config) -> Config:
  """Every check that needs neither devices nor data, before either starts.

  Raises:
    ConfigError: naming the key and the accepted values.
  """
  _one_of(config, 'optimizer', OPTIMIZERS)
  _one_of(config, 'schedule', SCHEDULES)
  _one_of(config, 'bound_policy', BOUND_POLICIES)
  _one_of(config, 'parallel', PARALLEL_MODES)
  _one_of(config, 'model', (*CLASSIFIERS, *TRANSFORMERS))
  for key in ('learning_rate', 'global_batch_size', 'seq_len',
              'log_every_steps', 'num_train_steps', 'num_epochs'):
    _at_least(config, key, 0, strict=True)
  for key in ('weight_decay', 'min_trust_ratio', 'max_trust_ratio',
              'eval_examples', 'final_eval_examples', 'eval_every_steps',
              'checkpoint_every_steps', 'warmup_epochs', 'warmup_fraction',
              'policy_n_std', 'policy_warmup_steps', 'skip_nonfinite_steps',
              'clip_grad_norm'):
    _at_least(config, key, 0)
  for key in ('policy_decay', 'adam_b2'):
    if not 0 <= getattr(config, key) < 1:
      raise ConfigError(f'{key}={getattr(config, key)!r} must be in [0, 1)')
  if config.accum_steps < 1 or config.global_batch_size % config.accum_steps:
    raise ConfigError(f'accum_steps={config.accum_steps} must divide '
                      f'global_batch_size {config.global_batch_size}')
  max_len = getattr(TRANSFORMERS.get(config.model), 'max_len', None)
  if max_len is not None and config.seq_len > max_len:
    raise ConfigError(f'seq_len {config.seq_len} exceeds the {config.model} '
                      f'max_len {max_len}')
  if config.noise_scale and (config.accum_steps < 2 or
                             config.parallel not in ('jit', 'fsdp')):
    raise ConfigError('noise_scale needs accum_steps > 1 (the micro-batches '
                      'are the small batches) and parallel jit or fsdp (a '
                      f'global view of the batch); got accum_steps='
                      f'{config.accum_steps}, parallel={config.parallel!r}')
  return config


def _type_name(hint) -> str:
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  if typing.get_origin(hint) is tuple:
    return 'comma-separated floats'
  if args and len(args) < len(typing.get_args(hint)):
    return f'{_type_name(args[0])} or none'
  return getattr(hint, '__name__', str(hint))


def field_help() -> dict[str, tuple[str, object, str]]:
  """``{key: (type, default, help)}``; help is the field's source comment."""
  comments = {}
  for line in inspect.getsource(Config).splitlines():
    m = re.match(r'\s+(\w+): .*?#\s*(.*)$', line)
    if m:
      comments[m.group(1)] = m.group(2)
  hints = typing.get_type_hints(Config)
  return {f.name: (_type_name(hints[f.name]), f.default,
                   comments.get(f.name, ''))
          for f in dataclasses.fields(Config)}


def _parse(field: dataclasses.Field, text: str):
  hint = typing.get_type_hints(Config)[field.name]
  expected = _type_name(hint)
  if text.lower() == 'none':
    if type(None) not in typing.get_args(hint):
      raise ConfigError(f'--set {field.name}=none: expected {expected}')
    return None
  try:
    if typing.get_origin(hint) is tuple:
      return tuple(float(x) for x in text.split(',') if x)
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = args[0]
    if kind is bool:
      if text.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(text)
      return text.lower() in ('true', '1')
    return kind(text)
  except ValueError:
    raise ConfigError(f'--set {field.name}={text}: expected {expected}'
                      ) from None


def apply_overrides(config: Config, overrides: list[str]) -> Config:
  """Applies ``key=value`` strings, with a clear error for unknown keys."""
  fields = {f.name: f for f in dataclasses.fields(Config)}
  changes = {}
  for item in overrides:
    key, sep, value = item.partition('=')
    if not sep:
      raise ConfigError(f'--set {item!r} must look like key=value')
    if key not in fields:
      raise ConfigError(f'unknown config key {key!r}; see --help for the '
                        'keys')
    changes[key] = _parse(fields[key], value)
  return config.replace(**changes)


def cli(preset: Config, description: str, argv=None,
        prog: str | None = None) -> tuple[Config, str]:
  """``--workdir DIR [--set key=value ...]`` on top of a preset.

  ``--help`` lists every ``--set`` key with its type, the preset's value and
  a few words (the comments of :class:`Config`).
  """
  rows = [f'  {k:<24} {t:<26} {getattr(preset, k)!r:<14} {h}'
          for k, (t, _, h) in field_help().items()]
  parser = argparse.ArgumentParser(
      prog=prog, description=description,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='--set keys (type, value in this preset, meaning):\n' +
      '\n'.join(rows))
  parser.add_argument('--workdir', required=True,
                      help='checkpoints, metrics.jsonl and plots go here')
  parser.add_argument('--set', dest='overrides', action='append', default=[],
                      metavar='KEY=VALUE', help='override a config field')
  args = parser.parse_args(argv)
  return validate(apply_overrides(preset, args.overrides)), args.workdir
