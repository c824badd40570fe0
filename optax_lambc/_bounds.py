"""Trust-ratio bounds: constants, schedules, per-layer trees and policies.

A bound given to :func:`optax_lambc.scale_by_clipped_trust_ratio` or
:func:`optax_lambc.lambc` may be

* ``None``: no bound on that side;
* a number, or a scalar array (as ``optax.inject_hyperparams`` passes it);
* an optax schedule of the transform's step count (0 on the first update);
* a per-layer tree of numbers or schedules, a tree prefix of the params
  matched by key path (``math.inf`` is "no upper bound"); for a stacked leaf a
  value may also be an array of the layer axes' shape, one bound per slice;
* a :class:`BoundPolicy`, passed as ``max_trust_ratio``: a stateful rule that
  sets both bounds per layer.

Bounds are clamped at 0 when applied and the upper bound wins where a lower
one exceeds it; Python and NumPy numbers that break either rule are rejected
when the optimizer is built.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lambc import _checks
from optax_lambc import _layers

# ``resolve(spec, default)``: a bound spec's value for every layer, as a vector.
Resolver = Callable[[Any, float], jax.Array]


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


def _is_scalar(spec: Any) -> bool:
  """True for a number or a scalar array: one value for every layer."""
  return not (spec is None or _is_value(spec)) and (
      jax.tree_util.treedef_is_leaf(jax.tree.structure(spec))) and (
          jnp.ndim(spec) == 0)


def _concrete(x: Any) -> np.ndarray | None:
  """``x`` as a NumPy array if it is a build-time number or NumPy array."""
  if isinstance(x, np.ndarray) or (
      _checks.is_build_time_number(x)):
    return np.asarray(x)
  return None


def check_bound(name: str, spec: Any) -> None:
  """Checks a bound's build-time numbers.

  Raises:
    TypeError: for a bool or string, or a policy inside a per-layer tree.
    ValueError: for a NaN or negative number, naming ``name`` and the path.
  """
  if spec is None or _is_value(spec):
    return
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      spec, is_leaf=_is_value)[0]:
    where = f'{name}[{_checks.path_str(path)}]' if path else name
    if isinstance(leaf, BoundPolicy):
      raise TypeError(f'`{where}`: a BoundPolicy must be the whole '
                      '`max_trust_ratio`, not a leaf of a per-layer tree.')
    if callable(leaf):
      continue
    _checks.check_number(where, leaf if np.ndim(leaf) == 0 else
                         np.zeros([]))
    values = _concrete(leaf)
    if values is not None and values.ndim and (
        values.dtype == np.bool_ or not np.issubdtype(values.dtype,
                                                      np.number)):
      raise TypeError(f'`{where}` must hold numbers, got {leaf!r}.')
    if values is not None and bool(np.any(np.isnan(values) | (values < 0))):
      raise ValueError(f'`{where}` must be >= 0 and not NaN; got {leaf!r}.')


def _concrete_entries(spec: Any) -> dict[tuple[str, ...], np.ndarray]:
  """Path -> NumPy value, for the build-time numbers of a bound spec."""
  if spec is None or _is_value(spec):
    return {}
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      spec, is_leaf=_is_value)[0]:
    value = None if callable(leaf) else _concrete(leaf)
    if value is not None:
      out[_checks.path_keys(path)] = value
  return out


def check_bound_order(min_spec: Any, max_spec: Any,
                      min_name: str = 'min_trust_ratio',
                      max_name: str = 'max_trust_ratio') -> None:
  """Raises ``ValueError`` where a build-time lower bound exceeds the upper.

  Entries are compared wherever one's path is a prefix of the other's (a
  scalar applies everywhere).
  """
  lows, highs = _concrete_entries(min_spec), _concrete_entries(max_spec)
  for lp, lo in lows.items():
    for hp, hi in highs.items():
      n = min(len(lp), len(hp))
      if lp[:n] != hp[:n]:
        continue
      try:
        bad = bool(np.any(lo > hi))
      except ValueError:  # shapes that do not broadcast
        continue
      if bad:
        where = _checks.path_str(lp if len(lp) >= len(hp) else hp)
        at = f' at {where!r}' if where != '<root>' else ''
        raise ValueError(f'`{min_name}` ({lo.tolist()!r}) must not exceed '
                         f'`{max_name}` ({hi.tolist()!r}){at}.')


class Plans:
  """Per-layer trees matched to a params structure once, then reused.

  A transform holds one; matching (and its strict checks) runs the first time
  a spec meets a params structure, so ``update`` does no path matching after
  ``init`` has seen the same structure.
  """

  def __init__(self):
    self._cache: dict[Any, Any] = {}

  def entries(self, spec: Any, name: str, params: optax.Params,
              slots: list[_layers.LayerSlot]) -> Any:
    """``[(slot, value)]`` per leaf, or a NumPy vector if all are constant."""
    key = (jax.tree.structure(params, is_leaf=_checks.is_masked), id(spec),
           name)
    hit = self._cache.get(key)
    if hit is not None and hit[0] is spec:
      return hit[1]
    values = _checks.per_leaf(spec, params, name, is_leaf=_is_value)
    paths = [k for k, p in _checks.flatten_params(params)
             if not _checks.is_masked(p)]
    plan = []
    for path, slot, v in zip(paths, slots, values, strict=True):
      if not callable(v) and np.ndim(v) and np.shape(v) != slot.shape:
        raise ValueError(
            f'`{name}` at {_checks.path_str(path)!r} has shape '
            f'{np.shape(v)}; it must be a scalar or have the layer axes\' '
            f'shape {slot.shape}.')
      plan.append((slot, v))
    if all(_concrete(v) is not None for _, v in plan):
      plan = np.concatenate(
          [np.broadcast_to(np.asarray(v, np.float64), s.shape).ravel()
           for s, v in plan]) if plan else np.zeros([0])
    self._cache[key] = (spec, plan)
    return plan


def make_resolver(count: jax.Array, params: optax.Params,
                  slots: list[_layers.LayerSlot], dtype: jnp.dtype,
                  plans: Plans) -> Resolver:
  """Returns ``resolve(spec, default, name='bound')`` for one step."""
  n = sum(s.size for s in slots)

  def resolve(spec: Any, default: float, name: str = 'bound') -> jax.Array:
    if spec is None:
      return jnp.full([n], default, dtype)
    if callable(spec):
      return jnp.full([n], spec(count), dtype)
    if _is_scalar(spec):
      return jnp.full([n], spec, dtype)
    plan = plans.entries(spec, name, params, slots)
    if isinstance(plan, np.ndarray):
      return jnp.asarray(plan, dtype)
    return jnp.concatenate([
        jnp.broadcast_to(jnp.asarray(v(count) if callable(v) else v, dtype),
                         s.shape).ravel() for s, v in plan]) if plan else (
                             jnp.zeros([0], dtype))

  return resolve


# ---------------------------------------------------------------------------
# Dynamic bounds after AdaBound.


def dynamic_bounds(final: Any = 1.0, gamma: float = 1e-3) -> BoundPolicy:
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
  _checks.check_positive('gamma', gamma)

  def bounds(state, count, resolve):
    del state
    b = resolve(final, 1.0)
    t = count.astype(b.dtype) + 1
    return b * (1 - 1 / (gamma * t + 1)), b * (1 + 1 / (gamma * t))

  return BoundPolicy(
      f'dynamic_bounds(final={final!r}, gamma={gamma!r})',
      init=lambda template: optax.EmptyState(), bounds=bounds,
      update=lambda raw, applied, state, count: state)


# ---------------------------------------------------------------------------
# Running-statistics bounds after ALRC.


class RunningStatBoundsState(NamedTuple):
  """Per-layer EW mean and variance of the trust ratio (vectors)."""

  count: jax.Array  # int32 per layer: observations absorbed so far.
  mean: jax.Array  # EW mean (the first observation seeds it).
  var: jax.Array  # EW variance (0 after the first observation).


def running_stat_bounds(
    n_std: Any = 3.0,
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
  if _is_scalar(n_std):
    _checks.check_positive('n_std', n_std)
  _checks.check_number('decay', decay, upper=1.0)
  if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int):
    raise ValueError(f'`warmup_steps` must be an int, got {warmup_steps!r}.')
  if warmup_steps < 1:
    raise ValueError(f'`warmup_steps` must be >= 1, got {warmup_steps!r}.')
  check_bound('min_trust_ratio', min_trust_ratio)
  check_bound('max_trust_ratio', max_trust_ratio)
  check_bound_order(min_trust_ratio, max_trust_ratio)
  hi_fixed = math.inf if max_trust_ratio is None else max_trust_ratio

  def init(template):
    return RunningStatBoundsState(
        count=jnp.zeros(template.shape, jnp.int32),
        mean=jnp.zeros_like(template), var=jnp.zeros_like(template))

  def bounds(state, count, resolve):
    n = resolve(n_std, 3.0)
    sigma = _layers.safe_sqrt(state.var)
    fixed = (count < warmup_steps) | (state.count == 0)
    lo = jnp.maximum(state.mean - n * sigma, min_trust_ratio)
    hi = jnp.minimum(state.mean + n * sigma, hi_fixed)
    dtype = state.mean.dtype
    return (jnp.where(fixed, jnp.asarray(min_trust_ratio, dtype), lo),
            jnp.where(fixed, jnp.asarray(hi_fixed, dtype), hi))

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
