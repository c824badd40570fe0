"""The train/eval loop shared by every example.

``train_and_evaluate(config, workdir)`` builds the model, the optimizer and the
input pipeline from a Config; compiles one step for the chosen parallel mode;
trains with a progress bar; evaluates; writes ``metrics.jsonl`` (process 0);
and checkpoints with orbax: a structured tree ``{'params', 'batch_stats',
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
"""

import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_lambc
from examples.lib import input_pipeline, models, optim
from examples.lib import noise_scale as noise_scale_lib
from examples.lib import config as config_lib
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


def model_inputs(batch: dict) -> jax.Array:
  """What the model reads: images, or a language model's input tokens."""
  return batch['inputs'] if 'inputs' in batch else batch['image']


def loss_terms(logits: jax.Array, batch: dict):
  """``(sum of losses, sum of correct predictions, count)`` of a batch.

  A classifier counts examples (``label``); a language model counts target
  tokens (``targets``), weighted by ``weights`` (0 on padding). An eval
  batch's ``mask`` drops padded examples.
  """
  if 'targets' in batch:
    labels, weights = batch['targets'], batch['weights']
  else:
    labels = batch['label']
    weights = jnp.ones(labels.shape, jnp.float32)
  if 'mask' in batch:
    mask = batch['mask'].reshape(batch['mask'].shape + (1,) * (
        weights.ndim - 1))
    weights = weights * mask
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.argmax(logits, -1) == labels
  return (jnp.sum(losses * weights), jnp.sum(correct * weights),
          jnp.sum(weights))


def _micro_batches(batch: dict, k: int) -> dict:
  """``(B, ...) -> (k, B/k, ...)``; micro-batch ``j`` holds examples
  ``j, j+k, ...``, so each device's micro-batch is a slice of its own shard
  (no data moves between devices)."""
  return jax.tree.map(lambda x: jnp.swapaxes(
      x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1), batch)


def make_train_step(apply, tx, schedule, axis_name=None, telemetry=True,
                    mode='jit', accum_steps: int = 1,
                    noise_scale: bool = False):
  """``step(state, batch) -> (state, metrics)``; pure, for every mode.

  Under ``pmap`` each device differentiates its local loss and the gradients
  are ``pmean``-ed. Under ``shard_map`` the params are device-invariant, so
  JAX's autodiff already sums the cotangents across the axis: there we
  differentiate the ``pmean`` of the loss and must not average again.

  Gradient accumulation (``accum_steps=k > 1``): the batch is cut into k
  micro-batches that a ``lax.scan`` inside the step differentiates one after
  the other, summing the gradients; each micro-batch's loss is normalised by
  the whole batch's count, so the sum is the gradient of the whole batch's
  mean loss and the optimizer then takes one step: the same update as one
  batch of ``k*b`` (tested to 1e-5), with the activation memory of ``b``.
  We chose this over ``optax.MultiSteps``: one compiled call per optimizer
  step (no k host round trips), no gradient buffer in the optimizer state,
  the schedules and the trust-ratio telemetry count optimizer steps, and the
  loop, checkpoints and data position stay per step. BatchNorm statistics
  are updated micro-batch by micro-batch.

  ``noise_scale`` (with ``accum_steps > 1`` under ``jit``/``fsdp``, where the
  step sees the global batch) adds the two terms of the gradient noise scale
  (``examples.lib.noise_scale``) from the micro-batch gradients.
  """
  global_loss = mode == 'shard_map'

  def step(state: TrainState, batch):
    # The whole (local) batch's count, known before any forward pass.
    count = (jnp.sum(batch['weights']) if 'weights' in batch else
             jnp.asarray(model_inputs(batch).shape[0], jnp.float32))

    def loss_fn(params, batch_stats, micro):
      logits, new_stats = apply(params, batch_stats, model_inputs(micro),
                                True)
      loss_sum, correct, _ = loss_terms(logits, micro)
      loss = loss_sum / count
      if global_loss:
        loss = jax.lax.pmean(loss, axis_name)
      return loss, (correct, new_stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
      (loss, (correct, new_stats)), grads = grad_fn(
          state.params, state.batch_stats, batch)
    else:
      def micro_step(carry, micro):
        grads, stats, loss, correct, small_sq = carry
        (m_loss, (m_correct, stats)), m_grads = grad_fn(state.params, stats,
                                                        micro)
        if noise_scale:  # |mean gradient of this micro-batch|^2
          m_count = (jnp.sum(micro['weights']) if 'weights' in micro else
                     model_inputs(micro).shape[0])
          small_sq += noise_scale_lib.squared_norm(m_grads) * jnp.square(
              count / m_count) / accum_steps
        return (jax.tree.map(jnp.add, grads, m_grads), stats, loss + m_loss,
                correct + m_correct, small_sq), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, new_stats, loss, correct, small_sq), _ = jax.lax.scan(
          micro_step, (zeros, state.batch_stats, jnp.zeros([]),
                       jnp.zeros([]), jnp.zeros([])),
          _micro_batches(batch, accum_steps))
    accuracy = correct / count
    if axis_name is not None:
      accuracy = jax.lax.pmean(accuracy, axis_name)
      if not global_loss:
        grads, loss = jax.lax.pmean((grads, loss), axis_name)
    noise = {}
    if noise_scale and accum_steps > 1:
      examples = model_inputs(batch).shape[0]
      noise = noise_scale_lib.estimate(
          small_sq, noise_scale_lib.squared_norm(grads),
          examples / accum_steps, examples)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss)
    metrics = {'loss': jnp.where(finite, loss, 0.0), 'accuracy': accuracy,
               'finite_steps': finite.astype(jnp.float32),
               'lr': jnp.asarray(schedule(state.step), jnp.float32)}
    metrics.update({f'noise/{k}': v for k, v in noise.items()})
    # Which layers' gradients held NaN/Inf (summed over a log interval).
    metrics.update({f'nonfinite/{k}': v.astype(jnp.float32) for k, v in
                    optax_lambc.nonfinite_leaves(grads).items()})
    if isinstance(opt_state, optax.ApplyIfFiniteState):
      metrics['skipped_steps'] = opt_state.total_notfinite.astype(
          jnp.float32)
      metrics['consecutive_skips'] = opt_state.notfinite_count.astype(
          jnp.float32)
    if telemetry:
      # One (4, layers) array; split into per-layer scalars on the host at
      # log time (TrustRatioStats.as_metrics), never inside the step.
      metrics['trust_ratio'] = optax_lambc.trust_ratio_stats(opt_state)
    return TrainState(state.step + 1, params, new_stats, opt_state), metrics

  return step


def make_eval_step(apply):
  def step(params, batch_stats, batch):
    logits, _ = apply(params, batch_stats, model_inputs(batch), False)
    loss_sum, correct, count = loss_terms(logits, batch)
    return {'loss_sum': loss_sum, 'correct': correct, 'count': count}
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
  # A fixed trust-ratio mask would need params: the optimizer is created
  # after the model, from pure-dict params.
  model = models.create_model(config.model, config.num_classes, config.width,
                              config.seed, bn_axis_name=parallel.axis_name)
  layer_axes = models.layer_axes(model)
  graphdef, params, batch_stats, template = models.split(model)
  apply = models.make_apply(graphdef, template)
  tx = optim.create_optimizer(config, schedule, layer_axes=layer_axes)
  if config.skip_nonfinite_steps:
    tx = optax.apply_if_finite(tx, config.skip_nonfinite_steps)
  opt_state = tx.init(params)
  state = TrainState(jnp.zeros([], jnp.int32), params, batch_stats, opt_state)
  step_fn = make_train_step(apply, tx, schedule, parallel.axis_name,
                            telemetry=_has_trust_ratio(opt_state),
                            mode=parallel.mode,
                            accum_steps=config.accum_steps,
                            noise_scale=config.noise_scale)
  train_step = parallel.compile_step(step_fn, state)
  return Experiment(
      config=config, parallel=parallel, apply=apply, tx=tx,
      schedule=schedule, state=parallel.place_state(state),
      train_step=train_step, steps_per_epoch=steps_per_epoch,
      total_steps=total_steps,
      train_ds=input_pipeline.train_dataset(config, train_source),
      eval_source=eval_source, eval_step=jax.jit(make_eval_step(apply)),
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


def language_model_metrics(config: Config, record: dict) -> dict:
  """Bits per byte (the loss is nats per byte) and tokens/s of a record."""
  out = {'bits_per_byte': record['loss'] / math.log(2)}
  if 'steps_per_s' in record:
    out['tokens_per_s'] = (record['steps_per_s'] * config.global_batch_size *
                           config.seq_len)
  return out


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
  # pmap keeps a replicated copy; evaluate it with the mesh like 'jit'.
  feed = Parallel('jit' if exp.parallel.mode == 'pmap' else
                  exp.parallel.mode, exp.parallel.mesh)
  totals = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  for batch in input_pipeline.eval_batches(config, source, local_batch):
    out = exp.eval_step(single.params, single.batch_stats,
                        feed.shard_batch(batch))
    for k in totals:
      totals[k] += float(out[k])
  count = max(totals['count'], 1.0)
  out = {'loss': totals['loss_sum'] / count,
         'accuracy': totals['correct'] / count, 'count': int(count)}
  if exp.config.language_model:  # count: target bytes
    out.update(language_model_metrics(exp.config, out))
  return out


# ---------------------------------------------------------------------------
# Checkpoints.

# Test-only fault injection: SIGKILL this process right after the save of the
# given step has started, while orbax is still writing it.
KILL_DURING_SAVE_ENV = 'EXAMPLES_KILL_DURING_SAVE_AT_STEP'


def _manager(workdir: str):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def _as_tree(state: TrainState) -> dict:
  """The checkpointed tree: readable paths, loadable by other tools."""
  return {'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state, 'step': state.step}


def save_checkpoint(mngr, exp: Experiment, state: TrainState) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  single = exp.parallel.unplace_state(state)
  step = int(single.step)
  meta = {'step': step, 'data_index': step,
          'config': dataclasses.asdict(exp.config)}
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(_as_tree(single)),
      meta=ocp.args.JsonSave(meta)))
  if os.environ.get(KILL_DURING_SAVE_ENV) == str(step):
    os.kill(os.getpid(), signal.SIGKILL)
  mngr.wait_until_finished()


def restore_checkpoint(mngr, exp: Experiment) -> tuple[TrainState, int] | None:
  """The latest complete checkpoint, restored into the state's shardings.

  Every array is read straight into the sharding the step expects (each host
  reads only its shards: no full host copy under FSDP); under ``pmap`` the
  single copy is then replicated.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  latest = mngr.latest_step()
  if latest is None:
    return None
  template = exp.parallel.unplace_state(exp.state)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(
          x, 'sharding', None) if exp.parallel.mode != 'pmap' else None),
      _as_tree(template))
  restored = mngr.restore(latest, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  tree = restored['state']
  state = TrainState(tree['step'], tree['params'], tree['batch_stats'],
                     tree['opt_state'])
  if exp.parallel.mode == 'pmap':
    state = exp.parallel.place_state(state)
  return state, restored['meta']['data_index']


# ---------------------------------------------------------------------------
# Metrics.


class MetricsWriter:
  """JSON lines, written by process 0 only."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = jax.process_index() == 0

  def truncate(self, step: int) -> None:
    """Drops rows after ``step`` (a resumed run writes them again)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      keep = [line for line in f if line.strip() and
              json.loads(line)['step'] <= step]
    with open(self.path, 'w') as f:
      f.writelines(keep)

  def write(self, record: dict) -> None:
    if self.enabled:
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')


def _to_host(tree) -> dict:
  return {k: float(np.mean(np.asarray(v))) for k, v in
          jax.device_get(tree).items()}


def _telemetry_to_host(stats: optax_lambc.TrustRatioStats | None) -> dict:
  """Per-layer trust-ratio scalars of the last step (pmap: one replica)."""
  if stats is None:
    return {}
  values = np.asarray(jax.device_get(stats.values))
  return stats._replace(values=values[0] if values.ndim == 3 else values
                        ).as_metrics()


# Summed over a log interval (on device); everything else is the last value.
_SUMMED = ('loss', 'accuracy', 'lr', 'finite_steps', 'noise/grad_sq',
           'noise/trace')


class MetricsAccumulator:
  """Sums the step metrics on device; reads them on the host at log steps."""

  def __init__(self):
    self.sums, self.count, self.t0, self.last = None, 0, time.time(), {}

  def add(self, metrics: dict) -> None:
    summed = {k: v for k, v in metrics.items()
              if k in _SUMMED or k.startswith('nonfinite/')}
    self.sums = summed if self.sums is None else jax.tree.map(
        jnp.add, self.sums, summed)
    self.last = {k: v for k, v in metrics.items() if k not in summed}
    self.count += 1

  def record(self, step: int) -> dict:
    """The train record of the interval, and a reset."""
    host = _to_host(self.sums)
    last = dict(self.last)
    telemetry = _telemetry_to_host(last.pop('trust_ratio', None))
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
    return record


class NonFiniteError(RuntimeError):
  """A non-finite loss that was not skipped; the message names the layers."""


def _check_finite(config: Config, record: dict) -> None:
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
  """Set by SIGTERM or Ctrl-C; the loop stops cleanly after the step in
  flight (never inside a checkpoint write). A second Ctrl-C stops at once."""

  def __init__(self):
    self.requested = False

  def __call__(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True


def _restore_or_start(exp: Experiment, mngr, writer: MetricsWriter,
                      workdir: str) -> tuple[TrainState, int]:
  restored = restore_checkpoint(mngr, exp) if mngr is not None else None
  if restored is None:
    writer.truncate(0)
    return exp.state, 0
  state, start = restored
  writer.truncate(start)
  if jax.process_index() == 0:
    where = os.path.join(os.path.abspath(workdir), 'checkpoints', str(start))
    print(f'resumed from step {start} (checkpoint {where})', flush=True)
  return state, start


def _should_checkpoint(config: Config, done: int, total: int) -> bool:
  # On schedule and at the end; a run stopped early (stop_after_steps) saves
  # nothing extra, like a real kill.
  return bool(config.checkpoint_every_steps) and (
      done % config.checkpoint_every_steps == 0 or done == total)


@dataclasses.dataclass
class Position:
  """Where the loop is: steps done and the last checkpoint written."""

  step: int
  checkpoint_step: int | None


def _train_loop(exp: Experiment, state: TrainState, pos: Position,
                writer: MetricsWriter, mngr,
                stop_request: StopRequest) -> tuple[TrainState, dict]:
  """Steps from ``pos.step`` to the stop step; logs, evaluates, checkpoints."""
  config = exp.config
  eval_every = config.eval_every_steps or exp.steps_per_epoch
  stop = min(exp.total_steps, config.stop_after_steps or exp.total_steps)
  bar = _progress(config, exp.total_steps, pos.step)
  acc, result = MetricsAccumulator(), {}
  for step in range(pos.step, stop):
    batch = exp.train_ds[step]
    if config.debug_nan_at_step == step:
      key = 'weights' if 'weights' in batch else 'image'
      batch = dict(batch, **{key: batch[key] * np.nan})
    state, metrics = exp.train_step(state, exp.parallel.shard_batch(batch))
    acc.add(metrics)
    done = pos.step = step + 1
    if done % config.log_every_steps == 0 or done == stop:
      record = acc.record(done)
      if config.language_model:
        record.update(language_model_metrics(config, record))
      writer.write(record)
      _check_finite(config, record)
      if bar is not None and 'tokens_per_s' in record:
        bar.set_postfix(bpb=f"{record['bits_per_byte']:.3f}",
                        tok_s=f"{record['tokens_per_s']:.0f}")
      elif bar is not None:
        bar.set_postfix(loss=f"{record['loss']:.3f}",
                        acc=f"{record['accuracy']:.3f}")
      result['train'] = record
    if done % eval_every == 0 or done == exp.total_steps:
      result['eval'] = evaluate(exp, state)
      writer.write({'step': done, 'split': 'eval', **result['eval']})
    if mngr is not None and _should_checkpoint(config, done,
                                               exp.total_steps):
      save_checkpoint(mngr, exp, state)
      pos.checkpoint_step = done
    if bar is not None:
      bar.update(1)
    if stop_request.requested:
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
  writer = MetricsWriter(workdir)
  mngr = _manager(workdir) if config.checkpoint_every_steps else None
  state, start = _restore_or_start(exp, mngr, writer, workdir)
  pos = Position(start, start if start else None)
  # SIGTERM (a scheduler's stop) and Ctrl-C end the run after the step in
  # flight; Python allows handlers only in the main thread.
  stop_request = StopRequest()
  signals = (signal.SIGTERM, signal.SIGINT)
  main = threading.current_thread() is threading.main_thread()
  previous = [signal.signal(s, stop_request) for s in signals] if main else []
  try:
    state, result = _train_loop(exp, state, pos, writer, mngr, stop_request)
  except KeyboardInterrupt:
    raise Interrupted(pos.step, pos.checkpoint_step) from None
  finally:
    # previous is empty off the main thread.
    for sig, handler in zip(signals, previous, strict=False):
      signal.signal(sig, handler)
  result['state'] = exp.parallel.unplace_state(state)
  if result['steps'] == exp.total_steps:
    for split in filter(None, config.final_eval_splits.split(',')):
      result.setdefault('final', {})[split] = evaluate(
          exp, state, input_pipeline.get_source(config, split),
          config.final_eval_examples)
  if exp.data_info is not None:
    result['data'] = exp.data_info
  return result


def _progress(config: Config, total: int, start: int):
  if not config.progress or jax.process_index() != 0:
    return None
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=start, unit='step', dynamic_ncols=True,
              desc=f'{config.dataset}/{config.optimizer}')
