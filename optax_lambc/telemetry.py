"""Trust-ratio telemetry: find the layer-wise state, summarise it."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lambc import _validation
from optax_lambc.layers import ScaleByClippedTrustRatioState


class TrustRatioStats(NamedTuple):
  """Per-layer trust ratios of the last update, keyed by parameter path.

  Each value is a device array of the leaf's layer-axes shape: a scalar for a
  leaf that is one layer, ``(L,)`` for a leaf stacking L layers.

  Attributes:
    raw: Unclipped ratio per layer (NaN after a non-finite update).
    applied: Ratio actually applied, ``clip(raw, lower, upper)``.
    lower: Lower bound in force per layer.
    upper: Upper bound in force per layer (``inf``: none).
    clipped_lower_fraction: Fraction of adapted layers (stacked slices count
      one each) raised to the lower bound (a device scalar).
    clipped_upper_fraction: Fraction of adapted layers cut to the upper bound.
  """

  raw: dict[str, jax.Array]
  applied: dict[str, jax.Array]
  lower: dict[str, jax.Array]
  upper: dict[str, jax.Array]
  clipped_lower_fraction: jax.Array
  clipped_upper_fraction: jax.Array

  def as_metrics(self, prefix: str = 'trust_ratio') -> dict[str, jax.Array]:
    """One flat ``{name: scalar}`` dict, ready for a metrics writer.

    Keys are ``<prefix>/<field>/<path>`` for a leaf that is one layer and
    ``<prefix>/<field>/<path>[i]`` (``[i,j]`` for two layer axes) for each
    slice of a stacked leaf.
    """
    out = {f'{prefix}/clipped_lower_fraction': self.clipped_lower_fraction,
           f'{prefix}/clipped_upper_fraction': self.clipped_upper_fraction}
    for field in ('raw', 'applied', 'lower', 'upper'):
      for path, value in getattr(self, field).items():
        if not jnp.ndim(value):
          out[f'{prefix}/{field}/{path}'] = value
          continue
        for index in np.ndindex(*jnp.shape(value)):
          out[f'{prefix}/{field}/{path}[{",".join(map(str, index))}]'] = (
              value[index])
    return out


def _is_state(x: Any) -> bool:
  return isinstance(x, ScaleByClippedTrustRatioState)


def _by_path(tree: Any) -> dict[str, jax.Array]:
  return {_validation.path_str(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def trust_ratio_stats(opt_state: optax.OptState) -> TrustRatioStats:
  """Summarises the trust ratios recorded in an optimizer state.

  The :class:`optax_lambc.ScaleByClippedTrustRatioState` is found anywhere in
  ``opt_state``: inside ``optax.chain``, ``optax.inject_hyperparams``,
  ``optax.masked``, ``optax.MultiSteps``, ``optax.apply_if_finite`` or
  ``optax.multi_transform``. Everything is a device array, so the call is cheap
  inside ``jit`` and needs no host sync; log it every step if you like.

  Args:
    opt_state: An optimizer state containing one or more clipped trust-ratio
      states (several are merged; a path seen twice gets a ``#i`` suffix).

  Returns:
    A :class:`TrustRatioStats`.

  Raises:
    ValueError: If ``opt_state`` holds no clipped trust-ratio state.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax, optax_lambc
    >>> opt = optax.MultiSteps(optax_lambc.lambc(1e-2), every_k_schedule=1)
    >>> params = {'w': jnp.array([3.0, 4.0])}
    >>> _, state = opt.update({'w': jnp.array([1.0, 0.0])}, opt.init(params),
    ...                       params)
    >>> stats = optax_lambc.trust_ratio_stats(state)
    >>> print(f"{stats.raw['w']:.3f} {stats.applied['w']:.3f}")
    5.000 1.000
    >>> float(stats.clipped_upper_fraction)
    1.0
  """
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_state)
            if _is_state(s)]
  if not states:
    raise ValueError(
        'opt_state contains no ScaleByClippedTrustRatioState; build the '
        'optimizer with optax_lambc.lambc or scale_by_clipped_trust_ratio.')
  fields = {'raw': {}, 'applied': {}, 'lower': {}, 'upper': {}}
  for i, s in enumerate(states):
    trees = {'raw': s.raw_ratio, 'applied': s.applied_ratio,
             'lower': s.lower, 'upper': s.upper}
    for name, tree in trees.items():
      for path, value in _by_path(tree).items():
        key = path if path not in fields[name] else f'{path}#{i}'
        fields[name][key] = value
  if fields['raw']:
    flat = lambda d: jnp.concatenate(
        [jnp.ravel(v).astype(jnp.float32) for v in d.values()])
    r, a = flat(fields['raw']), flat(fields['applied'])
    low, high = jnp.mean(a > r), jnp.mean(a < r)
  else:
    low = high = jnp.zeros([], jnp.float32)
  return TrustRatioStats(**fields, clipped_lower_fraction=low,
                         clipped_upper_fraction=high)


def nonfinite_leaves(tree: optax.Updates) -> dict[str, jax.Array]:
  """Which leaves hold a NaN or an infinity, keyed by parameter path.

  ``optax.apply_if_finite`` discards the whole inner state of a step it skips,
  so the trust-ratio telemetry of a skipped step is never recorded. Call this
  on the step's gradients (or updates) inside the jitted step, next to the
  update, to learn which layers went non-finite: device bools, no host sync.

  Args:
    tree: Gradients, updates or params.

  Returns:
    ``{path: bool scalar}``, True where the leaf has a non-finite value.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> bad = optax_lambc.nonfinite_leaves(
    ...     {'enc': jnp.array([1.0, jnp.nan]), 'head': jnp.ones(2)})
    >>> [path for path, b in bad.items() if b]
    ['enc']
  """
  return {path: ~jnp.all(jnp.isfinite(leaf))
          for path, leaf in _by_path(tree).items()}
