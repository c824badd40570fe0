"""The train/eval loop shared by every example.

``train_and_evaluate(config, workdir)`` builds the model, the optimizer and the
input pipeline from a Config; compiles one step for the chosen parallel mode;
trains with a progress bar; evaluates; writes ``config.json``, the metrics as
``metrics.jsonl`` and TensorBoard summaries, and at the end (or on a stop) the
plots of ``plots.plot_run`` (process 0; ``metrics``, ``plots``); and
checkpoints with orbax: a structured tree ``{'params', 'batch_stats',
'opt_state', 'step'}`` (bound-policy state included) plus JSON metadata (data
position, config). Rerunning with the same workdir resumes from the latest
*complete* checkpoint (orbax writes to a temporary directory and renames it
when done, so a kill mid-write leaves nothing that is restored), restores each
array straight into its target sharding, truncates ``metrics.jsonl`` to the
restored step, and ends bit-identical to an uninterrupted run.

Non-finite values: with ``skip_nonfinite_steps=N`` the optimizer is wrapped in
``optax.apply_if_finite`` and skipped steps are logged with the layers whose
gradients were non-finite; otherwise a non-finite loss stops the run at the
next log step with :class:`NonFiniteError` naming those layers.

Metrics stay on device between log steps: the step returns device scalars that
are summed on device, and the host reads them every ``log_every_steps``.

SIGTERM (a preemption) or Ctrl-C: the step in flight finishes and is
checkpointed, whatever ``checkpoint_every_steps`` says (all processes agree on
the step), then :class:`Interrupted` says how to resume.
"""

import dataclasses
import functools
import json
import math
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_lambc
from examples.lib import checkpoints, input_pipeline, models, optim, tasks
from examples.lib.steps import TrainState, make_eval_step, make_train_step
from examples.lib.metrics import (MetricsAccumulator, MetricsWriter,
                                  check_finite)
from examples.lib import config as config_lib
from examples.lib.config import Config
from examples.lib.parallel import Parallel


def _has_trust_ratio(opt_state) -> bool:
  try:
    optax_lambc.trust_ratio_stats(opt_state)
    return True
  except ValueError:
    return False


@dataclasses.dataclass
class Experiment:
  """Everything built from a Config, before any training compute."""

  config: Config
  task: tasks.Classifier  # or tasks.LanguageModel
  parallel: Parallel
  apply: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state: TrainState
  train_step: Any
  steps_per_epoch: int
  total_steps: int
  train_ds: Any
  eval_source: Any
  eval_step: Any
  data_info: dict | None = None  # a text corpus's fingerprint per split
  layer_axes: Any = None  # of stacked blocks (layer_axes_from_flax)


def build(config: Config) -> Experiment:
  """Validates the config, builds model/optimizer/data; no training yet."""
  config_lib.validate(config)
  parallel = Parallel.create(config.parallel, config.global_batch_size)
  per_device = config.global_batch_size // jax.device_count()
  if per_device % config.accum_steps:
    raise ValueError(f'accum_steps={config.accum_steps} must divide each '
                     f"device's {per_device} examples (global_batch_size "
                     f'{config.global_batch_size} over {jax.device_count()} '
                     'devices)')
  train_source = input_pipeline.get_source(config, config.train_split)
  eval_source = input_pipeline.get_source(config, config.eval_split)
  if len(train_source) < config.global_batch_size:
    raise ValueError(f'the {config.train_split!r} split has '
                     f'{len(train_source)} examples, fewer than one global '
                     f'batch of {config.global_batch_size}')
  steps_per_epoch = len(train_source) // config.global_batch_size
  total_steps = config.num_train_steps or max(
      1, math.ceil(config.num_epochs * steps_per_epoch))
  schedule = optim.learning_rate_schedule(config, steps_per_epoch,
                                          total_steps)
  # The optimizer is created after the model: masks and layer_axes are read
  # from it, and it optimizes the model's nnx.State of Params.
  model = models.create_model(config.model, config.num_classes, config.width,
                              config.seed, bn_axis_name=parallel.axis_name)
  layer_axes = models.layer_axes(model)
  graphdef, params, batch_stats = models.split(model)
  apply = models.make_apply(graphdef)
  tx = optim.create_optimizer(config, schedule, layer_axes=layer_axes,
                               params=params)
  if config.skip_nonfinite_steps:
    tx = optax.apply_if_finite(tx, config.skip_nonfinite_steps)
  parallel = dataclasses.replace(parallel, tx=tx)
  opt_state = tx.init(params)
  state = TrainState(jnp.zeros([], jnp.int32), params, batch_stats, opt_state)
  task = tasks.task_for(config)
  step_fn = make_train_step(task, apply, tx, schedule, parallel.axis_name,
                            telemetry=_has_trust_ratio(opt_state),
                            mode=parallel.mode,
                            accum_steps=config.accum_steps,
                            noise_scale=config.noise_scale)
  train_step = parallel.compile_step(step_fn, state)
  return Experiment(
      config=config, task=task, parallel=parallel, apply=apply, tx=tx,
      schedule=schedule, state=parallel.place_state(state),
      train_step=train_step, steps_per_epoch=steps_per_epoch,
      total_steps=total_steps,
      train_ds=input_pipeline.train_dataset(config, train_source),
      eval_source=eval_source, eval_step=jax.jit(make_eval_step(task, apply)),
      data_info=_data_info(config, train_source, eval_source),
      layer_axes=layer_axes)


def _data_info(config: Config, train_source, eval_source) -> dict | None:
  train = input_pipeline.data_fingerprint(train_source)
  if train is None:
    return None
  return {config.train_split: train,
          config.eval_split: input_pipeline.data_fingerprint(eval_source)}


def describe_data(info: dict) -> str:
  """One line about a text corpus, e.g. for the start of a run."""
  parts = []
  for split, fp in info.items():
    if 'files' in fp:
      parts.append(f"{split}: {fp['files']} files, {fp['bytes']:,} bytes, "
                   f"sha256 {fp['sha256']}")
    else:
      parts.append(f"{split}: {fp['examples']:,} examples")
  first = next(iter(info.values()))
  head = first['corpus'] + (f" (Python {first['python']})" if 'python' in
                            first else '')
  return f"corpus {head}; " + '; '.join(parts)


EVAL_BATCH = 256


def evaluate(exp: Experiment, state: TrainState, source=None,
             examples: int | None = None) -> dict:
  """Loss and accuracy over the eval split, or over ``source``; padded
  batches. ``examples`` (default: the config's ``eval_examples``) takes a
  fixed sample of that many (0: all). A language model adds bits per byte."""
  config = exp.config
  source = exp.eval_source if source is None else source
  if examples is not None:
    config = config.replace(eval_examples=examples)
  single = exp.parallel.unplace_state(state)
  n_local = jax.local_device_count()
  # Each process feeds a multiple of its device count; the last batch is
  # padded and masked, so every batch has one shape (one compilation). At
  # least EVAL_BATCH examples per batch: no gradients are kept.
  local_batch = max(n_local, max(config.global_batch_size, EVAL_BATCH) //
                    jax.process_count() // n_local * n_local)
  feed = exp.parallel.for_eval()
  totals = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  for batch in input_pipeline.eval_batches(config, source, local_batch):
    out = exp.eval_step(single.params, single.batch_stats,
                        feed.shard_batch(batch))
    for k in totals:
      totals[k] += float(out[k])
  count = max(totals['count'], 1.0)
  out = {'loss': totals['loss_sum'] / count,
         'accuracy': totals['correct'] / count, 'count': int(count)}
  out.update(exp.task.host_metrics(exp.config, out))
  return out


# ---------------------------------------------------------------------------
# The loop.


class Interrupted(Exception):
  """Ctrl-C or SIGTERM: where the run stopped and what is saved."""

  def __init__(self, step: int, checkpoint_step: int | None):
    self.step, self.checkpoint_step = step, checkpoint_step
    saved = ('no checkpoint yet' if checkpoint_step is None else
             f'last checkpoint at step {checkpoint_step}')
    super().__init__(f'stopped at step {step}; {saved}; rerun the same '
                     'command to resume')


class StopRequest:
  """Set by SIGTERM (a scheduler's preemption) or Ctrl-C. The loop finishes
  the step in flight, checkpoints it and stops. A second Ctrl-C stops at
  once."""

  def __init__(self):
    self.requested = False

  def __call__(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True

  def agreed(self) -> bool:
    """Whether any process was asked to stop: every process then stops, and
    checkpoints, after the same step (one small all-gather per step when
    there are several processes)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(
        np.int32(self.requested))))


def _restore_or_start(exp: Experiment, mngr, writer: MetricsWriter,
                      workdir: str) -> tuple[TrainState, int]:
  restored = (checkpoints.restore(mngr, exp.parallel, exp.state)
              if mngr is not None else None)
  if restored is None:
    writer.truncate(0)
    return exp.state, 0
  state, start = restored
  writer.truncate(start)
  if jax.process_index() == 0:
    where = os.path.join(os.path.abspath(workdir), 'checkpoints', str(start))
    print(f'resumed from step {start} (checkpoint {where})', flush=True)
  return state, start


def _should_checkpoint(config: Config, pos: 'Position', total: int) -> bool:
  """On schedule, and at the end of a run that checkpoints (on schedule or
  because a stop did): a rerun then finds the finished state. A run stopped
  early by ``stop_after_steps`` saves nothing extra, like a real kill."""
  every, done = config.checkpoint_every_steps, pos.step
  return bool(every and done % every == 0) or (
      done == total and (bool(every) or pos.checkpoint_step is not None))


@dataclasses.dataclass
class Position:
  """Where the loop is: steps done and the last checkpoint written."""

  step: int
  checkpoint_step: int | None


def _train_loop(exp: Experiment, state: TrainState, pos: Position,
                writer: MetricsWriter, manager: Callable[[], Any],
                stop_request: StopRequest) -> tuple[TrainState, dict]:
  """Steps from ``pos.step`` to the stop step; logs, evaluates, checkpoints
  (``manager()`` gives the checkpoint manager, created on first use)."""
  config = exp.config
  eval_every = config.eval_every_steps or exp.steps_per_epoch
  stop = min(exp.total_steps, config.stop_after_steps or exp.total_steps)
  bar = _progress(config, exp.total_steps, pos.step)
  acc, result = MetricsAccumulator(), {}
  for step in range(pos.step, stop):
    batch = exp.train_ds[step]
    state, metrics = exp.train_step(state, exp.parallel.shard_batch(batch))
    acc.add(exp.parallel.unplace_state(metrics))
    done = pos.step = step + 1
    if done % config.log_every_steps == 0 or done == stop:
      record = acc.record(done)
      record.update(exp.task.host_metrics(config, record))
      writer.write(record)
      check_finite(config, record)
      if bar is not None:
        bar.set_postfix(exp.task.postfix(record))
      result['train'] = record
    if done % eval_every == 0 or done == exp.total_steps:
      result['eval'] = evaluate(exp, state)
      writer.write({'step': done, 'split': 'eval', **result['eval']})
    if _should_checkpoint(config, pos, exp.total_steps):
      checkpoints.save(manager(), exp.parallel, exp.config, state)
      pos.checkpoint_step = done
    if bar is not None:
      bar.update(1)
    if stop_request.agreed():
      if pos.checkpoint_step != done:  # the step in flight, always
        checkpoints.save(manager(), exp.parallel, exp.config, state)
        pos.checkpoint_step = done
      if bar is not None:
        bar.close()  # the stop message then prints on its own line
      raise KeyboardInterrupt
  if bar is not None:
    bar.close()
  result['steps'] = stop
  return state, result


def train_and_evaluate(config: Config, workdir: str) -> dict:
  """Trains (resuming if a checkpoint exists) and returns final metrics.

  Returns:
    ``{'train': last train record, 'eval': last eval metrics, 'steps': the
    step the run stopped at, 'state': the final TrainState (one copy)}``;
    ``'final'``: ``{split: metrics}`` over each whole split of
    ``final_eval_splits`` (a finished run); and for a text corpus
    ``'data'``: its fingerprint per split.

  Raises:
    NonFiniteError: on a non-finite loss that is not skipped.
    Interrupted: on Ctrl-C or SIGTERM (its message says how to resume).
  """
  os.makedirs(workdir, exist_ok=True)
  exp = build(config)
  if exp.data_info is not None and jax.process_index() == 0 and \
      config.progress:
    print(describe_data(exp.data_info), flush=True)
  if jax.process_index() == 0:  # what this run is (plots read it)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(dataclasses.asdict(config), f, indent=1)
  writer = MetricsWriter(workdir)
  manager = functools.cache(lambda: checkpoints.manager(workdir))
  existing = os.path.isdir(os.path.join(workdir, 'checkpoints'))
  state, start = _restore_or_start(exp, manager() if existing else None,
                                   writer, workdir)
  pos = Position(start, start if start else None)
  # SIGTERM (a scheduler's stop) and Ctrl-C end the run after the step in
  # flight; Python allows handlers only in the main thread.
  stop_request = StopRequest()
  signals = (signal.SIGTERM, signal.SIGINT)
  main = threading.current_thread() is threading.main_thread()
  previous = [signal.signal(s, stop_request) for s in signals] if main else []
  try:
    state, result = _train_loop(exp, state, pos, writer, manager,
                                stop_request)
  except KeyboardInterrupt:
    _write_plots(config, workdir)
    raise Interrupted(pos.step, pos.checkpoint_step) from None
  finally:
    writer.close()
    # previous is empty off the main thread.
    for sig, handler in zip(signals, previous, strict=False):
      signal.signal(sig, handler)
  _write_plots(config, workdir)
  result['state'] = exp.parallel.unplace_state(state)
  data = dict(exp.data_info) if exp.data_info is not None else None
  if result['steps'] == exp.total_steps:
    for split in filter(None, config.final_eval_splits.split(',')):
      source = input_pipeline.get_source(config, split)
      result.setdefault('final', {})[split] = evaluate(
          exp, state, source, config.final_eval_examples)
      if data is not None:
        data[split] = input_pipeline.data_fingerprint(source)
  if data is not None:
    result['data'] = data
  return result


def _write_plots(config: Config, workdir: str) -> None:
  """The run's curves and trust-ratio heat-maps (``plots.plot_run``), by
  process 0, once anything has been logged."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if config.plots and jax.process_index() == 0 and os.path.exists(path) and (
      os.path.getsize(path)):
    from examples.lib import plots  # pylint: disable=g-import-not-at-top
    plots.plot_run(workdir)


def _progress(config: Config, total: int, start: int):
  if not config.progress or jax.process_index() != 0:
    return None
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=start, unit='step', dynamic_ncols=True,
              desc=f'{config.dataset}/{config.optimizer}')
