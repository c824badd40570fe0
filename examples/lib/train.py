"""The train/eval loop shared by every example.

``train_and_evaluate(config, workdir)`` builds the model, the optimizer and the
input pipeline from a Config; compiles one step for the chosen parallel mode;
trains with a progress bar; evaluates; writes ``metrics.jsonl`` (process 0);
and checkpoints with orbax (params, batch statistics, optimizer state including
bound-policy state, step, data position). Rerunning with the same workdir
resumes from the latest checkpoint and ends where an uninterrupted run ends.

Metrics stay on device between log steps: the step returns device scalars that
are summed on device, and the host reads them every ``log_every_steps``.
"""

import dataclasses
import json
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_lambc
from examples.lib import input_pipeline, models, optim
from examples.lib.config import Config
from examples.lib.parallel import Parallel


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def _has_trust_ratio(opt_state) -> bool:
  try:
    optax_lambc.trust_ratio_stats(opt_state)
    return True
  except ValueError:
    return False


def make_train_step(apply, tx, schedule, axis_name=None, telemetry=True,
                    mode='jit'):
  """``step(state, batch) -> (state, metrics)``; pure, for every mode.

  Under ``pmap`` each device differentiates its local loss and the gradients
  are ``pmean``-ed. Under ``shard_map`` the params are device-invariant, so
  JAX's autodiff already sums the cotangents across the axis: there we
  differentiate the ``pmean`` of the loss and must not average again.
  """
  global_loss = mode == 'shard_map'

  def step(state: TrainState, batch):
    def loss_fn(params):
      logits, new_stats = apply(params, state.batch_stats, batch['image'],
                                True)
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['label']).mean()
      if global_loss:
        loss = jax.lax.pmean(loss, axis_name)
      return loss, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    if axis_name is not None:
      accuracy = jax.lax.pmean(accuracy, axis_name)
      if not global_loss:
        grads, loss = jax.lax.pmean((grads, loss), axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'accuracy': accuracy,
               'lr': jnp.asarray(schedule(state.step), jnp.float32)}
    if telemetry:
      metrics.update(optax_lambc.trust_ratio_stats(opt_state).as_metrics())
    return TrainState(state.step + 1, params, new_stats, opt_state), metrics

  return step


def make_eval_step(apply):
  def step(params, batch_stats, batch):
    logits, _ = apply(params, batch_stats, batch['image'], False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                             batch['label'])
    correct = jnp.argmax(logits, -1) == batch['label']
    m = batch['mask']
    return {'loss_sum': jnp.sum(losses * m), 'correct': jnp.sum(correct * m),
            'count': jnp.sum(m)}
  return step


@dataclasses.dataclass
class Experiment:
  """Everything built from a Config, before any training compute."""

  config: Config
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


def build(config: Config) -> Experiment:
  """Validates the config, builds model/optimizer/data; no training yet."""
  if config.optimizer not in optim.OPTIMIZERS:
    raise ValueError(f'unknown optimizer {config.optimizer!r}; known: '
                     f'{", ".join(optim.OPTIMIZERS)}')
  parallel = Parallel.create(config.parallel, config.global_batch_size)
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
  # A fixed trust-ratio mask would need params: the optimizer is created
  # after the model, from pure-dict params.
  model = models.create_model(config.model, config.num_classes, config.width,
                              config.seed, bn_axis_name=parallel.axis_name)
  graphdef, params, batch_stats, template = models.split(model)
  apply = models.make_apply(graphdef, template)
  tx = optim.create_optimizer(config, schedule)
  opt_state = tx.init(params)
  state = TrainState(jnp.zeros([], jnp.int32), params, batch_stats, opt_state)
  step_fn = make_train_step(apply, tx, schedule, parallel.axis_name,
                            telemetry=_has_trust_ratio(opt_state),
                            mode=parallel.mode)
  train_step = parallel.compile_step(step_fn, state)
  return Experiment(config, parallel, apply, tx, schedule,
                    parallel.place_state(state), train_step, steps_per_epoch,
                    total_steps, input_pipeline.train_dataset(config,
                                                              train_source),
                    eval_source, jax.jit(make_eval_step(apply)))


def evaluate(exp: Experiment, state: TrainState) -> dict:
  """Test loss and accuracy over the whole eval split (padded batches)."""
  single = exp.parallel.unplace_state(state)
  n_local = jax.local_device_count()
  # Each process feeds a multiple of its device count; the last batch is
  # padded and masked, so every batch has one shape (one compilation).
  local_batch = max(n_local, exp.config.global_batch_size //
                    jax.process_count() // n_local * n_local)
  # pmap keeps a replicated copy; evaluate it with the mesh like 'jit'.
  feed = Parallel('jit' if exp.parallel.mode == 'pmap' else
                  exp.parallel.mode, exp.parallel.mesh)
  totals = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  for batch in input_pipeline.eval_batches(exp.config, exp.eval_source,
                                           local_batch):
    out = exp.eval_step(single.params, single.batch_stats,
                        feed.shard_batch(batch))
    for k in totals:
      totals[k] += float(out[k])
  count = max(totals['count'], 1.0)
  return {'loss': totals['loss_sum'] / count,
          'accuracy': totals['correct'] / count, 'count': int(count)}


# ---------------------------------------------------------------------------
# Checkpoints.


def _manager(workdir: str):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def save_checkpoint(mngr, exp: Experiment, state: TrainState) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  single = exp.parallel.unplace_state(state)
  step = int(single.step)
  leaves = {f'{i:05d}': x for i, x in enumerate(jax.tree.leaves(single))}
  meta = {'step': step, 'data_index': step,
          'config': dataclasses.asdict(exp.config)}
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta)))
  mngr.wait_until_finished()


def restore_checkpoint(mngr, exp: Experiment) -> tuple[TrainState, int] | None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  latest = mngr.latest_step()
  if latest is None:
    return None
  template = exp.parallel.unplace_state(exp.state)
  leaves, treedef = jax.tree.flatten(template)
  abstract = {f'{i:05d}': jax.ShapeDtypeStruct(x.shape, x.dtype)
              for i, x in enumerate(leaves)}
  restored = mngr.restore(latest, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  values = [np.asarray(restored['state'][k]) for k in sorted(abstract)]
  state = jax.tree.unflatten(treedef, values)
  return exp.parallel.place_state(state), restored['meta']['data_index']


# ---------------------------------------------------------------------------
# The loop.


class MetricsWriter:
  """JSON lines, written by process 0 only."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = jax.process_index() == 0

  def write(self, record: dict) -> None:
    if self.enabled:
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')


def _to_host(tree) -> dict:
  return {k: float(np.mean(np.asarray(v))) for k, v in
          jax.device_get(tree).items()}


def train_and_evaluate(config: Config, workdir: str) -> dict:
  """Trains (resuming if a checkpoint exists) and returns final metrics."""
  os.makedirs(workdir, exist_ok=True)
  exp = build(config)
  writer = MetricsWriter(workdir)
  mngr = _manager(workdir) if config.checkpoint_every_steps else None
  state, start = exp.state, 0
  if mngr is not None:
    restored = restore_checkpoint(mngr, exp)
    if restored is not None:
      state, start = restored
  eval_every = config.eval_every_steps or exp.steps_per_epoch
  stop = min(exp.total_steps, config.stop_after_steps or exp.total_steps)
  bar = _progress(config, exp.total_steps, start)
  sums, count, last, t0 = None, 0, {}, time.time()
  result = {}
  for step in range(start, stop):
    batch = exp.parallel.shard_batch(exp.train_ds[step])
    state, metrics = exp.train_step(state, batch)
    scalars = {k: v for k, v in metrics.items()
               if k in ('loss', 'accuracy', 'lr')}
    sums = scalars if sums is None else jax.tree.map(jnp.add, sums, scalars)
    count += 1
    done = step + 1
    if done % config.log_every_steps == 0 or done == stop:
      host = {k: v / count for k, v in _to_host(sums).items()}
      last = _to_host({k: v for k, v in metrics.items() if k not in scalars})
      record = {'step': done, 'split': 'train', **host, **last,
                'steps_per_s': count / max(time.time() - t0, 1e-9)}
      writer.write(record)
      if bar is not None:
        bar.set_postfix(loss=f"{host['loss']:.3f}",
                        acc=f"{host['accuracy']:.3f}")
      result['train'] = record
      sums, count, t0 = None, 0, time.time()
    if done % eval_every == 0 or done == exp.total_steps:
      ev = evaluate(exp, state)
      writer.write({'step': done, 'split': 'eval', **ev})
      result['eval'] = ev
    # On schedule and at the end; a run stopped early (stop_after_steps, the
    # tests' stand-in for a kill) saves nothing extra, like a real kill.
    if mngr is not None and (done % config.checkpoint_every_steps == 0 or
                             done == exp.total_steps):
      save_checkpoint(mngr, exp, state)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  result['state'] = exp.parallel.unplace_state(state)
  result['steps'] = stop
  return result


def _progress(config: Config, total: int, start: int):
  if not config.progress or jax.process_index() != 0:
    return None
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=start, unit='step', dynamic_ncols=True,
              desc=f'{config.dataset}/{config.optimizer}')

