"""Step metrics: summed on device, read at log steps, written as JSON lines
and TensorBoard summaries; the stop on a non-finite loss."""

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import optax_lambc
from examples.lib import jsonl
from examples.lib import noise_scale as noise_scale_lib
from examples.lib.config import Config


class JsonlWriter:
  """``metrics.jsonl``: one JSON object per record."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')

  def truncate(self, step: int) -> None:
    """Drops rows after ``step`` (a resumed run writes them again)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      keep = [line for line in f if line.strip() and
              jsonl.loads(line)['step'] <= step]
    with open(self.path, 'w') as f:
      f.writelines(keep)

  def write(self, record: dict) -> None:
    with open(self.path, 'a') as f:
      f.write(jsonl.dumps(record) + '\n')

  def close(self) -> None:
    pass


class TensorBoardWriter:
  """TensorBoard event files in ``WORKDIR/tensorboard``: every finite numeric
  field of a record as the scalar ``SPLIT/FIELD`` (per-layer trust ratios too:
  ``train/trust_ratio/applied/blocks/fc1/kernel[3]``). Non-finite values are
  not written (TensorBoard cannot plot them): an unbounded layer has no
  ``upper`` curve, and a non-finite loss shows as ``nonfinite_steps``.

  Written with tensorboardX, a protobuf-only writer: clu's metric writers
  (what flax's examples use) write through TensorFlow, which these examples
  otherwise never need. ``tensorboard --logdir WORKDIR`` reads the files.
  A resumed run purges the events after its restored step, as
  ``truncate`` does for ``metrics.jsonl``.
  """

  def __init__(self, workdir: str):
    self.logdir = os.path.join(workdir, 'tensorboard')
    self._writer = None
    self._purge_step = None

  def truncate(self, step: int) -> None:
    self._purge_step = step + 1

  def _get(self):
    if self._writer is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(self.logdir, purge_step=self._purge_step,
                                   flush_secs=10)
    return self._writer

  def write(self, record: dict) -> None:
    writer = self._get()
    split = record.get('split', 'train')
    for key, value in record.items():
      if key not in ('step', 'split') and isinstance(
          value, (int, float)) and not isinstance(value, bool) and (
              math.isfinite(value)):
        writer.add_scalar(f'{split}/{key}', value, record['step'])

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class MetricsWriter:
  """Every record to ``metrics.jsonl`` and TensorBoard, by process 0 only."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.writers = [JsonlWriter(workdir)] + (
        [TensorBoardWriter(workdir)] if tensorboard else [])

  @property
  def path(self) -> str:
    return self.writers[0].path

  def truncate(self, step: int) -> None:
    if self.enabled:
      for w in self.writers:
        w.truncate(step)

  def write(self, record: dict) -> None:
    if self.enabled:
      for w in self.writers:
        w.write(record)

  def close(self) -> None:
    for w in self.writers:
      w.close()


def _to_host(tree) -> dict:
  return {k: float(np.mean(np.asarray(v))) for k, v in
          jax.device_get(tree).items()}


def _telemetry_to_host(stats: optax_lambc.TrustRatioStats | None) -> dict:
  """Per-layer trust-ratio scalars of the last step."""
  if stats is None:
    return {}
  return stats._replace(values=np.asarray(jax.device_get(stats.values))
                        ).as_metrics()


# Summed over a log interval (on device); everything else is the last value.
_SUMMED = ('loss', 'accuracy', 'lr', 'finite_steps', 'noise/grad_sq',
           'noise/trace')


class MetricsAccumulator:
  """Sums the step metrics on device; reads them on the host at log steps.

  The trust-ratio telemetry is the last step's, plus two per-layer figures
  over every step of the interval: the largest raw ratio
  (``trust_ratio/max_raw/...``, NaN ignored) and the number of steps whose
  raw ratio exceeded 1 (``trust_ratio/steps_above_one/...``), so where a
  bound of 1 binds is known for every step, not only the logged ones.
  """

  def __init__(self):
    self.sums, self.count, self.t0, self.last = None, 0, time.time(), {}
    self.ratios = None  # (max raw ratio, steps above 1), per layer

  def add(self, metrics: dict) -> None:
    summed = {k: v for k, v in metrics.items()
              if k in _SUMMED or k.startswith('nonfinite/')}
    self.sums = summed if self.sums is None else jax.tree.map(
        jnp.add, self.sums, summed)
    self.last = {k: v for k, v in metrics.items() if k not in summed}
    stats = metrics.get('trust_ratio')
    if stats is not None:
      raw = stats.raw
      above = (raw > 1).astype(jnp.int32)
      self.ratios = (raw, above) if self.ratios is None else (
          jnp.fmax(self.ratios[0], raw), self.ratios[1] + above)
    self.count += 1

  def _ratios_to_host(self) -> dict:
    stats = self.last.get('trust_ratio')
    if self.ratios is None or stats is None:
      return {}
    high, above = (np.asarray(x) for x in jax.device_get(self.ratios))
    out = {}
    for key, h, a in zip(stats.names.keys(), high.tolist(), above.tolist(),
                         strict=True):
      out[f'trust_ratio/max_raw/{key}'] = h
      out[f'trust_ratio/steps_above_one/{key}'] = a
    return out

  def record(self, step: int) -> dict:
    """The train record of the interval, and a reset."""
    host = _to_host(self.sums)
    last = dict(self.last)
    telemetry = {**_telemetry_to_host(last.pop('trust_ratio', None)),
                 **self._ratios_to_host()}
    finite = host.pop('finite_steps')
    bad = sorted(k.removeprefix('nonfinite/') for k, v in host.items()
                 if k.startswith('nonfinite/') and v > 0)
    host = {k: v for k, v in host.items() if not k.startswith('nonfinite/')}
    noise = {}
    if 'noise/trace' in host:  # each term summed over the interval first
      noise = {'noise_scale': noise_scale_lib.noise_scale(
          host.pop('noise/trace'), host.pop('noise/grad_sq'))}
    record = {'step': step, 'split': 'train',
              'loss': host['loss'] / finite if finite else math.nan,
              'accuracy': host['accuracy'] / self.count,
              'lr': host['lr'] / self.count, **_to_host(last), **telemetry,
              **noise, 'nonfinite_steps': self.count - int(finite),
              'nonfinite_layers': bad,
              'steps_per_s': self.count / max(time.time() - self.t0, 1e-9)}
    self.sums, self.count, self.t0 = None, 0, time.time()
    self.ratios = None
    return record


class NonFiniteError(RuntimeError):
  """A non-finite loss that was not skipped; the message names the layers."""


def check_finite(config: Config, record: dict) -> None:
  """Stops the run on a non-finite step that ``apply_if_finite`` let through.

  Without ``skip_nonfinite_steps`` any non-finite step stops it; with it, only
  one that the wrapper applied (after N consecutive skips).
  """
  if not record['nonfinite_steps']:
    return
  if config.skip_nonfinite_steps and (
      record.get('consecutive_skips', 0) < config.skip_nonfinite_steps):
    return
  ratios = sorted(k.removeprefix('trust_ratio/raw/') for k, v in
                  record.items() if k.startswith('trust_ratio/raw/') and
                  not math.isfinite(v))
  raise NonFiniteError(
      f"non-finite loss at step {record['step']} (in "
      f"{record['nonfinite_steps']} step(s) since the last log); non-finite "
      f"gradients in {record['nonfinite_layers'] or 'no layer'}; non-finite "
      f'trust ratios in {ratios or "no layer"}. Set skip_nonfinite_steps=N '
      'to skip such steps.')
