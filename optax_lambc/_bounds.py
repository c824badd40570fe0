"""Trust-ratio bounds: numbers, schedules, per-layer trees and policies.

A bound given to :func:`optax_lambc.scale_by_clipped_trust_ratio` or
:func:`optax_lambc.lambc` may be

* ``None``: no bound on that side;
* a number, or a scalar array (as ``optax.inject_hyperparams`` passes it);
* an optax schedule of the transform's step count (0 on the first update);
* a per-layer tree of those (:data:`optax_lambc.BoundTree`), a tree prefix
  of the params matched by key path (``math.inf`` is "no upper bound"); for a
  stacked leaf a value may also be an array of the layer axes' shape, one
  bound per slice;
* a :class:`BoundPolicy`, passed as ``max_trust_ratio``: a stateful rule that
  sets both bounds per layer.

Bounds are clamped at 0 when applied and the upper bound wins where a lower
one exceeds it; Python and NumPy numbers that break either rule are rejected
when the optimizer is built. Per-layer trees are matched to the params at
``init`` (where a typo fails) and again, from the state's layer record, at
each ``update``: nothing is cached.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lambc import _layers
from optax_lambc._layers import BoundTree


class Resolver(Protocol):
  """``resolve(spec, default)``: a bound's value for every layer (a vector)
  at the current step; ``default`` stands for ``None``."""

  def __call__(self, spec: BoundTree | None, default: float,
               name: str = ...) -> jax.Array:
    ...


@dataclasses.dataclass(frozen=True)
class BoundPolicy:
  """A stateful rule that sets per-layer lower and upper trust-ratio bounds.

  Every per-layer quantity a policy sees or returns is a vector with one entry
  per adapted layer (stacked slices count one each), so a rule written with
  elementwise ``jnp`` ops is per-layer for free.

  Attributes:
    name: Shown in error messages and ``repr``.
    init: ``init(template) -> state``; ``template`` is a vector of zeros.
    bounds: ``bounds(state, count, resolve) -> (lower, upper)``; ``count`` is
      the step count (0 on the first update); ``resolve(spec, default)`` turns
      a number, schedule or per-layer tree into a vector.
    update: ``update(raw, applied, state, count) -> state``, called after
      clipping with this step's raw and applied ratios.

  Examples:
    A stateless band [0.5, 2] for every layer, written as a policy:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_lambc
    >>> band = optax_lambc.BoundPolicy(
    ...     name='band(0.5, 2)',
    ...     init=lambda template: optax.EmptyState(),
    ...     bounds=lambda state, count, resolve: (resolve(0.5, 0.0),
    ...                                           resolve(2.0, 0.0)),
    ...     update=lambda raw, applied, state, count: state)
    >>> t = optax_lambc.scale_by_clipped_trust_ratio(max_trust_ratio=band)
    >>> params = {'w': jnp.array([3.0, 4.0])}          # |w| = 5
    >>> _, s = t.update({'w': jnp.array([0.6, 0.8])}, t.init(params), params)
    >>> print(s.raw_ratio, s.applied_ratio)
    [5.] [2.]
  """

  name: str
  init: Callable[[jax.Array], optax.OptState]
  bounds: Callable[[optax.OptState, jax.Array, Resolver],
                   tuple[jax.Array, jax.Array]]
  update: Callable[[jax.Array, jax.Array, optax.OptState, jax.Array],
                   optax.OptState]


def _is_value(x: Any) -> bool:
  return callable(x) or isinstance(x, BoundPolicy)


def _entries(name: str, spec: Any) -> list[tuple[str, tuple[str, ...], Any,
                                                  np.ndarray | None]]:
  """``(where, path, value, NumPy value or None)`` of every leaf of a bound
  spec; the NumPy value is there for build-time numbers and NumPy arrays."""
  out = []
  for path, v in (() if spec is None or _is_value(spec) else
                  jax.tree_util.tree_flatten_with_path(spec,
                                                       is_leaf=_is_value)[0]):
    keys = _layers.path_keys(path)
    concrete = isinstance(v, (np.ndarray, np.generic, int, float)) and (
        not isinstance(v, bool))
    out.append((f'{name}[{_layers.path_str(keys)}]' if keys else name, keys,
                v, np.asarray(v) if concrete else None))
  return out


def check_bounds(*named: tuple[str, Any]) -> None:
  """Checks the build-time numbers of each ``(name, bound)``; given a lower
  and an upper bound, also that no lower entry exceeds an upper one where
  one's path is a prefix of the other's.

  Raises:
    TypeError: for a bool or string, or a policy inside a per-layer tree.
    ValueError: for a NaN or negative number, or a lower bound above the
      upper, naming the argument and the path.
  """
  for name, spec in named:
    for where, _, leaf, value in _entries(name, spec):
      if isinstance(leaf, BoundPolicy):
        raise TypeError(f'`{where}`: a BoundPolicy must be the whole '
                        '`max_trust_ratio`, not a leaf of a per-layer tree.')
      if value is None or value.ndim == 0:
        if not callable(leaf):
          _layers.check_number(where, leaf)
      elif value.dtype == bool or not np.issubdtype(value.dtype, np.number):
        raise TypeError(f'`{where}` must hold numbers, got {leaf!r}.')
      elif np.any(np.isnan(value) | (value < 0)):
        raise ValueError(f'`{where}` must be >= 0 and not NaN; got {leaf!r}.')
  if len(named) < 2:
    return
  (lo_name, lo_spec), (hi_name, hi_spec) = named
  for _, lp, _, lo in _entries(lo_name, lo_spec):
    for _, hp, _, hi in _entries(hi_name, hi_spec):
      n = min(len(lp), len(hp))
      try:
        bad = lp[:n] == hp[:n] and lo is not None and hi is not None and (
            np.any(lo > hi))
      except ValueError:  # shapes that do not broadcast
        continue
      if bad:
        where = _layers.path_str(lp if len(lp) >= len(hp) else hp)
        at = f' at {where!r}' if where != '<root>' else ''
        raise ValueError(f'`{lo_name}` ({lo.tolist()!r}) must not exceed '
                         f'`{hi_name}` ({hi.tolist()!r}){at}.')


def resolver(count: jax.Array, layers: Any, dtype: jnp.dtype) -> Resolver:
  """The :class:`Resolver` of one step, from the state's layer record."""
  grids = [(k, g) for k, g in _layers.flat_params(layers)
           if not _layers.is_masked(g)]
  n = sum(g.size for _, g in grids)

  def resolve(spec, default, name='bound'):
    single = spec is None or callable(spec) or (
        jax.tree_util.treedef_is_leaf(jax.tree.structure(spec)) and
        jnp.ndim(spec) == 0)
    if single:  # one value for every layer
      value = default if spec is None else spec(count) if callable(
          spec) else spec
      return jnp.full([n], value, dtype)
    if not n:
      return jnp.zeros([0], dtype)
    parts = []
    for (keys, g), v in zip(grids, _layers.per_leaf(spec, layers, name,
                                                     _is_value), strict=True):
      v = v(count) if callable(v) else v
      squeeze = lambda shape: tuple(d for d in shape if d != 1)
      if np.ndim(v) and squeeze(np.shape(v)) != squeeze(g.shape):
        raise ValueError(
            f'`{name}` at {_layers.path_str(keys)!r} has shape {np.shape(v)};'
            ' it must be a scalar or have the layer axes\' shape '
            f'{squeeze(g.shape)}.')
      parts.append(jnp.broadcast_to(jnp.reshape(jnp.asarray(v, dtype), (
          -1,) if np.ndim(v) else ()), (g.size,)))
    return jnp.concatenate(parts)

  return resolve


# --- Dynamic bounds after AdaBound -------------------------------------------


def dynamic_bounds(final: BoundTree = 1.0, gamma: float = 1e-3
                   ) -> BoundPolicy:
  r"""Bounds that converge to ``final`` from both sides, after AdaBound.

  At step :math:`t = \text{count} + 1` (1 on the first update):

  .. math::
    \text{lower}(t) = b\,\bigl(1 - \tfrac{1}{\gamma t + 1}\bigr), \qquad
    \text{upper}(t) = b\,\bigl(1 + \tfrac{1}{\gamma t}\bigr),

  so early steps are barely clipped and the band narrows to :math:`b` at a
  speed set by :math:`\gamma`. The LAMBC paper (Sec. 4.2) tried this and found
  it worse than a fixed bound; it is here so that finding can be reproduced.
  Pass it as ``max_trust_ratio``; it sets both bounds.

  Args:
    final: The bound :math:`b` both sides converge to: a number, a schedule of
      the step count, or a per-layer tree of those.
    gamma: Convergence speed :math:`\gamma > 0`.

  Returns:
    A :class:`BoundPolicy`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> opt = optax_lambc.lambc(
    ...     1e-2, max_trust_ratio=optax_lambc.dynamic_bounds(1.0, gamma=0.1))
    >>> params = {'w': jnp.ones((2, 2))}
    >>> _, state = opt.update(params, opt.init(params), params)
    >>> stats = optax_lambc.trust_ratio_stats(state)
    >>> print(f"{stats.lower[0]:.4f} {stats.upper[0]:.1f}")
    0.0909 11.0

  References:
    Luo et al., `Adaptive Gradient Methods with Dynamic Bound of Learning Rate
    <https://arxiv.org/abs/1902.09843>`_, ICLR 2019.
  """
  check_bounds(('final', final))
  _layers.check_number('gamma', gamma, positive=True)

  def bounds(state, count, resolve):
    del state
    b = resolve(final, 1.0, 'final')
    t = count.astype(b.dtype) + 1
    return b * (1 - 1 / (gamma * t + 1)), b * (1 + 1 / (gamma * t))

  return BoundPolicy(
      f'dynamic_bounds(final={final!r}, gamma={gamma!r})',
      init=lambda template: optax.EmptyState(), bounds=bounds,
      update=lambda raw, applied, state, count: state)


# --- Running-statistics bounds after ALRC ------------------------------------


class RunningStatBoundsState(NamedTuple):
  """Per-layer EW mean and variance of the trust ratio (vectors)."""

  count: jax.Array  # int32 per layer: observations absorbed so far.
  mean: jax.Array  # EW mean (the first observation seeds it).
  var: jax.Array  # EW variance (0 after the first observation).


def running_stat_bounds(
    n_std: BoundTree = 3.0, decay: float = 0.99, warmup_steps: int = 100,
    min_trust_ratio: float = 0.0, max_trust_ratio: float | None = None
) -> BoundPolicy:
  r"""Per-layer bounds at mean ± ``n_std`` standard deviations of the ratio.

  Each layer keeps an exponentially weighted mean :math:`\mu` and variance
  :math:`\sigma^2` of its trust ratio :math:`x`, with :math:`\alpha = 1 - d`
  (the incremental form of Finch 2009, stable in float32):

  .. math::
    \delta = x - \mu,\quad \mu \leftarrow \mu + \alpha\delta,\quad
    \sigma^2 \leftarrow (1 - \alpha)(\sigma^2 + \alpha\delta^2),\qquad
    [\text{lower}, \text{upper}] = [\mu - n\sigma,\; \mu + n\sigma]
    \cap [\text{min}, \text{max}].

  The first observation sets :math:`\mu = x, \sigma^2 = 0`. For the first
  ``warmup_steps`` steps only the fixed ``[min, max]`` applies. As in ALRC, the
  statistics absorb the *applied* (clipped) ratio, so one outlier does not
  widen the band; a non-finite ratio is not absorbed. Gradients through the
  band are finite at zero variance. Pass the policy as ``max_trust_ratio``.

  Args:
    n_std: Width of the band in standard deviations (> 0): a number, schedule
      or per-layer tree.
    decay: EMA decay :math:`d` in [0, 1).
    warmup_steps: Steps (>= 1) before the statistical band is applied.
    min_trust_ratio: A fixed lower bound intersected with the band.
    max_trust_ratio: A fixed upper bound intersected with the band, or None.

  Returns:
    A :class:`BoundPolicy`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> policy = optax_lambc.running_stat_bounds(n_std=2.0, warmup_steps=1)
    >>> opt = optax_lambc.lambc(1e-2, max_trust_ratio=policy)
    >>> params = {'w': jnp.ones((2, 2))}
    >>> state = opt.init(params)
    >>> for _ in range(3):
    ...   _, state = opt.update(params, state, params)
    >>> s = optax_lambc.trust_ratio_stats(state)
    >>> bool(s.lower[0] <= s.applied[0] <= s.upper[0])
    True

  References:
    Ede & Beanland, `Adaptive Learning Rate Clipping Stabilizes Learning
    <https://arxiv.org/abs/1906.09060>`_, 2020.

    Finch, `Incremental calculation of weighted mean and variance
    <https://fanf2.user.srcf.net/hermes/doc/antiforgery/stats.pdf>`_, 2009.
  """
  if n_std is None:
    raise ValueError('`n_std` must be a number, schedule or per-layer tree, '
                     'not None.')
  check_bounds(('n_std', n_std))
  if isinstance(n_std, (int, float, np.generic)):
    _layers.check_number('n_std', n_std, positive=True)
  _layers.check_number('decay', decay, upper=1.0)
  if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or (
      warmup_steps < 1):
    raise ValueError(f'`warmup_steps` must be an int >= 1, got '
                     f'{warmup_steps!r}.')
  check_bounds(('min_trust_ratio', min_trust_ratio),
               ('max_trust_ratio', max_trust_ratio))
  hi_fixed = np.inf if max_trust_ratio is None else max_trust_ratio

  def init(template):
    return RunningStatBoundsState(jnp.zeros(template.shape, jnp.int32),
                                  jnp.zeros_like(template),
                                  jnp.zeros_like(template))

  def bounds(state, count, resolve):
    band = resolve(n_std, 3.0, 'n_std') * _layers.safe_sqrt(state.var)
    fixed = (count < warmup_steps) | (state.count == 0)
    return (jnp.where(fixed, min_trust_ratio,
                      jnp.maximum(state.mean - band, min_trust_ratio)),
            jnp.where(fixed, hi_fixed, jnp.minimum(state.mean + band,
                                                   hi_fixed)))

  def update(raw, applied, state, count):
    del raw, count
    ok = jnp.isfinite(applied)  # a non-finite ratio is not absorbed
    first, alpha = state.count == 0, 1 - decay
    delta = jnp.where(ok, applied - state.mean, 0)  # no NaN in gradients
    new = RunningStatBoundsState(
        state.count + 1, jnp.where(first, applied, state.mean + alpha * delta),
        jnp.where(first, 0, (1 - alpha) * (state.var + alpha * delta ** 2)))
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o).astype(o.dtype),
                        new, state)

  return BoundPolicy(
      f'running_stat_bounds(n_std={n_std!r}, decay={decay!r}, '
      f'warmup_steps={warmup_steps!r})', init, bounds, update)
