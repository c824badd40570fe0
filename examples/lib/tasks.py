"""What differs between an image classifier and a language model, decided
once from the config (``task_for``) instead of in every function.

A task says what the model reads from a batch, what it is scored against
(labels or next bytes, with weights), how a source row becomes an example,
whether training examples are augmented, and which metrics it adds on the
host (bits per byte and tokens/s for a language model).
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from examples.lib.config import Config


class Classifier:
  """Images with integer labels: ``{'image', 'label'}``; counts examples."""

  name = 'classifier'
  inputs_key = 'image'

  def targets(self, batch: dict) -> tuple[jax.Array, jax.Array]:
    """``(labels, weights)``: one label per example, weight 1."""
    labels = batch['label']
    return labels, jnp.ones(labels.shape, jnp.float32)

  def count(self, batch: dict) -> jax.Array:
    """What the loss is averaged over: the examples."""
    return jnp.asarray(batch[self.inputs_key].shape[0], jnp.float32)

  def preprocess(self, config: Config) -> Callable[[dict], dict]:
    mean, std = (np.asarray(v, np.float32) for v in
                 NORMALISATION[config.dataset])

    def fn(example: dict) -> dict:
      image = np.asarray(example['image'], np.float32) / 255.0
      return {'image': (image - mean) / std,
              'label': np.asarray(example['label'], np.int32)}

    return fn

  def augments(self, config: Config) -> bool:
    return config.augment

  def wrap_rows(self, source: Sequence[dict], config: Config):
    del config
    return source

  def host_metrics(self, config: Config, record: dict) -> dict:
    del config, record
    return {}

  def postfix(self, record: dict) -> dict[str, str]:
    return {'loss': f"{record['loss']:.3f}",
            'acc': f"{record['accuracy']:.3f}"}


class LanguageModel(Classifier):
  """Byte sequences: ``{'inputs', 'targets', 'weights'}``; counts target
  bytes (weight 0 on padding)."""

  name = 'language model'
  inputs_key = 'inputs'

  def targets(self, batch: dict) -> tuple[jax.Array, jax.Array]:
    return batch['targets'], batch['weights']

  def count(self, batch: dict) -> jax.Array:
    return jnp.sum(batch['weights'])

  def preprocess(self, config: Config) -> Callable[[dict], dict]:
    del config

    def fn(example: dict) -> dict:
      tokens = np.asarray(example['tokens'], np.int32)
      return {'inputs': tokens[:-1], 'targets': tokens[1:],
              'weights': np.asarray(example['weights'], np.float32)}

    return fn

  def augments(self, config: Config) -> bool:
    del config
    return False

  def wrap_rows(self, source: Sequence[dict], config: Config):
    """A tfds text source's rows as byte sequences."""
    from examples.lib import text_data  # pylint: disable=g-import-not-at-top
    return text_data.TextSource(source, config.seq_len)

  def host_metrics(self, config: Config, record: dict) -> dict:
    """Bits per byte (the loss is nats per byte) and tokens/s."""
    out = {'bits_per_byte': record['loss'] / math.log(2)}
    if 'steps_per_s' in record:
      out['tokens_per_s'] = (record['steps_per_s'] *
                             config.global_batch_size * config.seq_len)
    return out

  def postfix(self, record: dict) -> dict[str, str]:
    return {'bpb': f"{record['bits_per_byte']:.3f}",
            'tok_s': f"{record.get('tokens_per_s', 0):.0f}"}


NORMALISATION = {  # per-channel mean and std of the training images (0..1)
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'imagenet_resized/64x64': ((0.481, 0.457, 0.408), (0.260, 0.253, 0.268)),
    'digits': ((0.2087,), (0.3809,)),
}


def task_for(config: Config) -> Classifier:
  """The task of a config: its model decides (``transformer_*`` models are
  language models)."""
  return LanguageModel() if config.language_model else Classifier()
