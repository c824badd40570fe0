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


def _entries(name: str, spec: Any) -> list[tuple[str, tuple[str, ...], Any]]:
  """``(where, path, value)`` of every leaf of a bound spec."""
  if spec is None or _is_value(spec):
    return []
  return [(f'{name}[{_layers.path_str(k)}]' if k else name, k, v) for k, v in
          ((_layers.path_keys(p), v) for p, v in
           jax.tree_util.tree_flatten_with_path(spec, is_leaf=_is_value)[0])]


def _concrete(x: Any) -> np.ndarray | None:
  """``x`` as NumPy if it is a build-time number or NumPy array."""
  ok = isinstance(x, (np.ndarray, np.generic, int, float))
  return np.asarray(x) if ok and not isinstance(x, bool) else None


def check_bound(name: str, spec: Any) -> None:
  """Checks a bound's build-time numbers.

  Raises:
    TypeError: for a bool or string, or a policy inside a per-layer tree.
    ValueError: for a NaN or negative number, naming ``name`` and the path.
  """
  for where, _, leaf in _entries(name, spec):
    if isinstance(leaf, BoundPolicy):
      raise TypeError(f'`{where}`: a BoundPolicy must be the whole '
                      '`max_trust_ratio`, not a leaf of a per-layer tree.')
    values = None if callable(leaf) else _concrete(leaf)
    if values is None or values.ndim == 0:
      if not callable(leaf):
        _layers.check_number(where, leaf)
      continue
    if not np.issubdtype(values.dtype, np.number) or values.dtype == bool:
      raise TypeError(f'`{where}` must hold numbers, got {leaf!r}.')
    if np.any(np.isnan(values) | (values < 0)):
      raise ValueError(f'`{where}` must be >= 0 and not NaN; got {leaf!r}.')


def check_bound_order(min_spec: Any, max_spec: Any,
                      min_name: str = 'min_trust_ratio',
                      max_name: str = 'max_trust_ratio') -> None:
  """Raises ``ValueError`` where a build-time lower bound exceeds the upper,
  comparing entries wherever one's path is a prefix of the other's."""
  for _, lp, lo in _entries(min_name, min_spec):
    for _, hp, hi in _entries(max_name, max_spec):
      n = min(len(lp), len(hp))
      lo_, hi_ = _concrete(lo), _concrete(hi)
      if lp[:n] != hp[:n] or lo_ is None or hi_ is None:
        continue
      try:
        bad = bool(np.any(lo_ > hi_))
      except ValueError:  # shapes that do not broadcast
        continue
      if bad:
        where = _layers.path_str(lp if len(lp) >= len(hp) else hp)
        at = f' at {where!r}' if where != '<root>' else ''
        raise ValueError(f'`{min_name}` ({lo_.tolist()!r}) must not exceed '
                         f'`{max_name}` ({hi_.tolist()!r}){at}.')


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
  check_bound('final', final)
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
    n_std: BoundTree = 3.0,
    decay: float = 0.99,
    warmup_steps: int = 100,
    min_trust_ratio: float = 0.0,
    max_trust_ratio: float | None = None,
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
  check_bound('n_std', n_std)
  if _concrete(n_std) is not None:
    _layers.check_number('n_std', n_std, positive=True)
  _layers.check_number('decay', decay, upper=1.0)
  if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or (
      warmup_steps < 1):
    raise ValueError(f'`warmup_steps` must be an int >= 1, got '
                     f'{warmup_steps!r}.')
  check_bound('min_trust_ratio', min_trust_ratio)
  check_bound('max_trust_ratio', max_trust_ratio)
  check_bound_order(min_trust_ratio, max_trust_ratio)
  hi_fixed = np.inf if max_trust_ratio is None else max_trust_ratio

  def init(template):
    return RunningStatBoundsState(
        count=jnp.zeros(template.shape, jnp.int32),
        mean=jnp.zeros_like(template), var=jnp.zeros_like(template))

  def bounds(state, count, resolve):
    sigma = _layers.safe_sqrt(state.var)
    band = resolve(n_std, 3.0, 'n_std') * sigma
    fixed = (count < warmup_steps) | (state.count == 0)
    dtype = state.mean.dtype
    return (jnp.where(fixed, jnp.asarray(min_trust_ratio, dtype),
                      jnp.maximum(state.mean - band, min_trust_ratio)),
            jnp.where(fixed, jnp.asarray(hi_fixed, dtype),
                      jnp.minimum(state.mean + band, hi_fixed)))

  def update(raw, applied, state, count):
    del raw, count
    alpha = 1 - decay
    ok = jnp.isfinite(applied)
    first = state.count == 0
    delta = jnp.where(ok, applied - state.mean, 0)
    mean = jnp.where(first, applied, state.mean + alpha * delta)
    var = jnp.where(first, 0, (1 - alpha) * (state.var + alpha * delta ** 2))
    return RunningStatBoundsState(
        count=jnp.where(ok, state.count + 1, state.count),
        mean=jnp.where(ok, mean, state.mean),
        var=jnp.where(ok, var, state.var))

  return BoundPolicy(
      f'running_stat_bounds(n_std={n_std!r}, decay={decay!r}, '
      f'warmup_steps={warmup_steps!r})', init, bounds, update)
