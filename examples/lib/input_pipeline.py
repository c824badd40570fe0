"""TF-free input pipeline: tfds.data_source (ArrayRecord) + grain.

Training batches come from a random-access ``grain.MapDataset``: shuffled per
epoch with the run's seed, sliced per process (each host reads only its shard),
augmented, normalised (images) or split into inputs and targets (text; see
``examples.lib.text_data``) and batched with ``drop_remainder``. Batch ``i`` is
``dataset[i]``, so the iterator position is just the step number: checkpoints
store it and a resumed run continues with the exact batches it would have seen.
"""

import dataclasses
import logging
from collections.abc import Sequence

import grain
import jax
import numpy as np

from examples.lib import tasks, text_data
from examples.lib.config import Config

@dataclasses.dataclass(frozen=True)
class DigitsSource:
  """scikit-learn's 1,797 8x8 handwritten digits (ships with the package).

  A fixed stratified split: 1,347 train and 450 test images. Pixels 0..16 are
  rescaled to 0..255 uint8 so that every dataset enters the pipeline alike.
  """

  split: str

  def _arrays(self):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)[..., None]
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, digits.target, test_size=450, random_state=0,
        stratify=digits.target)
    return (tr_x, tr_y) if self.split == 'train' else (te_x, te_y)

  def load(self) -> list[dict]:
    if self.split not in ('train', 'test'):
      raise ValueError(f"digits has splits 'train' and 'test', got "
                       f'{self.split!r}')
    x, y = self._arrays()
    return [{'image': xi, 'label': np.int64(yi)} for xi, yi in zip(x, y,
                                                                    strict=True)]


def get_source(config: Config, split: str) -> Sequence[dict]:
  """A random-access sequence of examples of one split.

  Images: ``{'image': HxWxC uint8, 'label': int}``. Text (a language model):
  ``{'tokens': uint8[seq_len + 1], 'weights': float32[seq_len]}`` from the
  offline standard-library corpus (``dataset='stdlib'``) or a tfds text
  dataset's ``text`` feature.
  """
  if config.dataset == 'digits':
    return DigitsSource(split).load()
  if config.dataset == 'stdlib':
    return text_data.StdlibCorpus(split, config.seq_len)
  return tasks.task_for(config).wrap_rows(_tfds_source(config, split), config)


class _DropMessage(logging.Filter):
  """Drops the log records whose message contains ``text``."""

  def __init__(self, text: str):
    super().__init__()
    self.text = text

  def filter(self, record: logging.LogRecord) -> bool:
    return self.text not in record.getMessage()


def _tfds_source(config: Config, split: str) -> Sequence[dict]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if config.mock_data:
    # tfds's mock builds the dataset in a fake data_dir that has no metadata
    # and says so on every call ("Variant folder ... has no
    # dataset_info.json"): expected there, so that one message is dropped.
    absl = logging.getLogger('absl')
    quiet = _DropMessage('has no dataset_info.json')
    absl.addFilter(quiet)
    try:
      with tfds.testing.mock_data(num_examples=config.mock_num_examples):
        src = tfds.data_source(config.dataset, split=split)
        return [src[i] for i in range(len(src))]
    finally:
      absl.removeFilter(quiet)
  try:
    return tfds.data_source(config.dataset, split=split,
                            data_dir=config.data_dir, download=False)
  except Exception as e:  # tfds raises several types for missing data
    raise FileNotFoundError(
        f'dataset {config.dataset!r} (split {split!r}) is not prepared in '
        f'data_dir={config.data_dir!r}. Prepare it once with '
        f'`tfds build {config.dataset} --data_dir=DIR --file_format='
        'array_record` (ImageNet needs the manually downloaded files; see '
        'the README), then pass --set data_dir=DIR; or run with '
        '--set mock_data=true to try the pipeline on fake data.') from e


def data_fingerprint(source: Sequence[dict]) -> dict | None:
  """What a text corpus is (recorded with every result), else None."""
  fingerprint = getattr(source, 'fingerprint', None)
  return fingerprint() if fingerprint is not None else None


def _augment(example: dict, rng: np.random.Generator) -> dict:
  """Random crop with 4 pixels of zero padding, then a horizontal flip."""
  image = example['image']
  h, w = image.shape[:2]
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  dy, dx = rng.integers(0, 9, size=2)
  image = padded[dy:dy + h, dx:dx + w]
  if rng.random() < 0.5:
    image = image[:, ::-1]
  return {**example, 'image': image}


def preprocess(config: Config):
  """The per-example map from a source row to what the model reads."""
  return tasks.task_for(config).preprocess(config)


def train_dataset(config: Config, source: Sequence[dict]) -> grain.MapDataset:
  """Batches of this process's share of the global batch; ``ds[step]``.

  The global batch divides evenly over the processes: ``Parallel.create``
  has checked that it divides over the devices, which the processes share
  equally.
  """
  n_proc = jax.process_count()
  ds = grain.MapDataset.source(source).shuffle(seed=config.seed).repeat()
  ds = ds[jax.process_index()::n_proc]
  if tasks.task_for(config).augments(config):
    ds = ds.random_map(_augment, seed=config.seed + 1)
  ds = ds.map(preprocess(config))
  return ds.batch(config.global_batch_size // n_proc, drop_remainder=True)


def eval_indices(size: int, sample: int = 0) -> np.ndarray:
  """All of ``range(size)``, or a fixed sorted sample of ``sample`` of them."""
  if not sample or sample >= size:
    return np.arange(size)
  return np.sort(np.random.default_rng(0).choice(size, sample, replace=False))


def eval_batches(config: Config, source: Sequence[dict], batch_size: int):
  """This process's eval examples in padded batches with a ``mask``.

  The whole split, or with ``config.eval_examples = N`` a fixed sample of N
  examples drawn without replacement from all of it (the same on every run
  and machine: a NumPy generator seeded 0, not the run's seed), so a sample
  of a text corpus covers all its files rather than the first few.
  """
  norm = preprocess(config)
  indices = eval_indices(len(source), config.eval_examples)
  total = len(indices)
  mine = [int(indices[i]) for i in
          range(jax.process_index(), total, jax.process_count())]
  # Every process yields the same number of batches (collectives need it).
  per_proc = -(-total // jax.process_count())
  padding = norm(source[0])  # masked out; any example of the right shape
  for start in range(0, per_proc, batch_size):
    idx = mine[start:start + batch_size]
    examples = [norm(source[i]) for i in idx]
    n = len(examples)
    examples += [padding] * (batch_size - n)
    batch = {k: np.stack([e[k] for e in examples]) for k in padding}
    batch['mask'] = np.arange(batch_size) < n
    yield batch
