"""Optimizers and learning-rate schedules from a Config."""

import functools
import math

import jax
import optax

import optax_lambc
from examples.lib.config import OPTIMIZERS, Config


def learning_rate_schedule(config: Config, steps_per_epoch: int,
                           total_steps: int) -> optax.Schedule:
  """Linear warm-up, then cosine decay, step decay or a constant."""
  warmup = int(config.warmup_epochs * steps_per_epoch +
               config.warmup_fraction * total_steps)
  rest = max(total_steps - warmup, 1)
  if config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(config.learning_rate, rest)
  elif config.schedule == 'step':
    main = optax.piecewise_constant_schedule(
        config.learning_rate,
        {int(f * total_steps) - warmup: config.step_decay_factor
         for f in config.step_decay_at})
  elif config.schedule == 'constant':
    main = optax.constant_schedule(config.learning_rate)
  else:
    raise ValueError(f'unknown schedule {config.schedule!r}; known: cosine, '
                     'step, constant')
  if warmup == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, config.learning_rate, warmup), main],
      [warmup])


def _unbounded(params, bound, names: set[str]):
  """A per-layer upper bound: ``math.inf`` on the leaves named in ``names``
  (e.g. LayerNorm scales), ``bound`` elsewhere, keyed by parameter path."""
  out: dict = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
            for k in path]
    keys = keys[:-1] if keys[-1] == 'value' else keys  # an nnx.Variable
    node = out
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = math.inf if keys[-1] in names else bound
  return out


def _bounds(config: Config, params=None):
  if config.bound_policy == 'fixed':
    names = set(filter(None, config.unbounded_params.split(',')))
    if names and config.max_trust_ratio is not None:
      if params is None:
        raise ValueError('unbounded_params needs the params')
      return _unbounded(params, config.max_trust_ratio, names)
    return config.max_trust_ratio
  if config.bound_policy == 'dynamic':
    return optax_lambc.dynamic_bounds(
        final=1.0 if config.max_trust_ratio is None else config.max_trust_ratio,
        gamma=config.policy_gamma)
  if config.bound_policy == 'running':
    return optax_lambc.running_stat_bounds(
        n_std=config.policy_n_std, decay=config.policy_decay,
        warmup_steps=config.policy_warmup_steps,
        max_trust_ratio=config.max_trust_ratio)
  raise ValueError(f'unknown bound_policy {config.bound_policy!r}; known: '
                   'fixed, dynamic, running')


def create_optimizer(config: Config, schedule: optax.Schedule,
                     layer_axes=None, params=None
                     ) -> optax.GradientTransformation:
  """The optimizer named by ``config.optimizer``, over the params state.

  ``layer_axes`` (from ``optax_lambc.layer_axes_from_flax`` for stacked
  blocks) gives LAMB, LAMBC and LARC one trust ratio per stacked layer, and
  makes the bias/norm mask judge each layer's rank, not the stacked leaf's.
  ``params`` (the model's) are needed for ``unbounded_params``. With
  ``clip_grad_norm > 0`` the gradients' global norm is clipped first.
  """
  tx = _create(config, schedule, layer_axes, params)
  if config.clip_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), tx)
  return tx


def _create(config: Config, schedule: optax.Schedule, layer_axes, params
            ) -> optax.GradientTransformation:
  mask = None
  if config.exclude_bias_and_norm:
    mask = functools.partial(optax_lambc.exclude_bias_and_norm,
                             layer_axes=layer_axes)
  name = config.optimizer
  adam = {'b2': config.adam_b2}
  if config.adam_eps is not None:
    adam['eps'] = config.adam_eps
  if name == 'lambc':
    return optax_lambc.lambc(
        schedule, weight_decay=config.weight_decay,
        min_trust_ratio=config.min_trust_ratio,
        max_trust_ratio=_bounds(config, params), mask=mask,
        trust_ratio_mask=mask, layer_axes=layer_axes, **adam)
  if name == 'lamb':  # LAMB = LAMBC without an upper bound, same masks
    return optax_lambc.lambc(
        schedule, weight_decay=config.weight_decay, max_trust_ratio=None,
        mask=mask, trust_ratio_mask=mask, layer_axes=layer_axes, **adam)
  if name == 'adamw':
    return optax.adamw(schedule, weight_decay=config.weight_decay, mask=mask,
                       **adam)
  if name == 'sgd':
    return optax.chain(optax.add_decayed_weights(config.weight_decay, mask),
                       optax.sgd(schedule, momentum=config.momentum))
  if name == 'larc':
    return optax_lambc.larc(schedule, momentum=config.momentum,
                            weight_decay=config.weight_decay,
                            weight_decay_mask=mask, trust_ratio_mask=mask,
                            layer_axes=layer_axes)
  raise ValueError(f'unknown optimizer {name!r}; known: '
                   f'{", ".join(OPTIMIZERS)}')
