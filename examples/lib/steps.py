"""The pure train and eval steps, for every parallel mode.

``make_train_step`` returns ``step(state, batch) -> (state, metrics)``:
forward, backward (with gradient accumulation over micro-batches if asked),
the optimizer, and device-side metrics (loss, accuracy, the per-layer
trust-ratio telemetry as one array, which layers' gradients were
non-finite, and the gradient noise scale's terms if asked).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import optax_lambc
from examples.lib import noise_scale as noise_scale_lib
from examples.lib import tasks


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def loss_terms(task: tasks.Classifier, logits: jax.Array, batch: dict):
  """``(sum of losses, sum of correct predictions, count)`` of a batch,
  weighted by the task's weights; an eval batch's ``mask`` drops padded
  examples."""
  labels, weights = task.targets(batch)
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


def make_train_step(task, apply, tx, schedule, axis_name=None, telemetry=True,
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
    count = task.count(batch)

    def loss_fn(params, batch_stats, micro):
      logits, new_stats = apply(params, batch_stats, micro[task.inputs_key],
                                True)
      loss_sum, correct, _ = loss_terms(task, logits, micro)
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
          m_count = task.count(micro)
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
      examples = batch[task.inputs_key].shape[0]
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


def make_eval_step(task, apply):
  def step(params, batch_stats, batch):
    logits, _ = apply(params, batch_stats, batch[task.inputs_key], False)
    loss_sum, correct, count = loss_terms(task, logits, batch)
    return {'loss_sum': loss_sum, 'correct': correct, 'count': count}
  return step
