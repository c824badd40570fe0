"""Trust-ratio bounds: constants, schedules, per-layer trees and policies.

A *bound* given to :func:`optax_lambc.scale_by_clipped_trust_ratio` (and to
:func:`optax_lambc.lambc`) may be

* ``None``: no bound on that side;
* a number (or scalar array, as ``optax.inject_hyperparams`` passes it);
* an optax schedule, called with the transform's step count (0 on the first
  update), e.g. large ratios early and small ones once weights settle (the
  LAMBC paper, Sec. 4.2);
* a pytree of numbers or schedules that is a tree prefix of the params
  (matched by key path): one bound per layer or per sub-tree (the paper,
  Sec. 5); use ``math.inf`` for "no upper bound" in such a tree. For a stacked
  leaf (see :mod:`optax_lambc.layers`) a leaf may also be an array of the
  layer axes' shape: one bound per stacked layer;
* a :class:`BoundPolicy`, passed as ``max_trust_ratio``: a stateful rule that
  sets both the lower and the upper bound per layer. :func:`dynamic_bounds` and
  :func:`running_stat_bounds` are the two shipped here.

Policy state lives in the optimizer state: it is checkpointable with the rest,
jit-safe, and never synchronises with the host.

Bounds are clamped at 0 when applied, so a schedule that goes negative gives a
zero step, never one that climbs the loss; bools are rejected (``True`` is not
a bound).
"""

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_lambc import _validation

# One array per adapted leaf, of that leaf's layer-axes shape (a scalar for a
# leaf that is one layer); see :mod:`optax_lambc.layers`.
RatioTree = Any
# A bound as the user gives it: None, a number, a schedule, a per-layer tree of
# those (leaves may also be arrays of the layer axes' shape), or a policy.
BoundSpec = Any
# ``resolve(spec, default)`` -> RatioTree: the value of a bound spec per layer.
Resolver = Callable[[BoundSpec, float], RatioTree]


@dataclasses.dataclass(frozen=True)
class BoundPolicy:
  """A stateful rule that sets per-layer lower and upper trust-ratio bounds.

  Every tree below is a ``RatioTree``: one array per adapted layer, of the
  leaf's layer-axes shape (a scalar unless the leaf stacks layers), shaped like
  the params with ``optax.MaskedNode`` where a layer is not adapted. Write the
  rule elementwise (``jax.tree.map`` with ``jnp`` ops) and it keeps one
  statistic per stacked layer for free.

  Attributes:
    name: Shown in error messages and ``repr``.
    init: ``init(template) -> state``; ``template`` is a RatioTree of zeros.
    bounds: ``bounds(state, count, resolve) -> (lower, upper)``; ``count`` is
      the transform's step count (0 on the first update); ``resolve(spec,
      default)`` turns a number, schedule or per-layer tree into a RatioTree.
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
    >>> float(s.raw_ratio['w']), float(s.applied_ratio['w'])
    (5.0, 2.0)
  """

  name: str
  init: Callable[[RatioTree], optax.OptState]
  bounds: Callable[[optax.OptState, jax.Array, Resolver],
                   tuple[RatioTree, RatioTree]]
  update: Callable[[RatioTree, RatioTree, optax.OptState, jax.Array],
                   optax.OptState]


def is_scalar_spec(spec: BoundSpec) -> bool:
  """True for a number or a scalar array (one pytree leaf of ndim 0)."""
  if spec is None or callable(spec) or isinstance(spec, BoundPolicy):
    return False
  return (jax.tree_util.treedef_is_leaf(
      jax.tree.structure(spec)) and jnp.ndim(spec) == 0)


def _is_bound_leaf(x: Any) -> bool:
  return callable(x) or isinstance(x, BoundPolicy)


def check_bound(name: str, spec: BoundSpec) -> None:
  """Validates a bound spec's concrete numbers at build time.

  Raises:
    TypeError: for a bool, or a policy inside a per-layer tree.
    ValueError: for a NaN or negative number, naming ``name`` and the path.
  """
  if spec is None or isinstance(spec, BoundPolicy):
    return
  if callable(spec):
    return
  if is_scalar_spec(spec):
    _validation.check_number(name, spec)
    return
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      spec, is_leaf=_is_bound_leaf)[0]:
    where = f'{name}[{_validation.path_str(path)}]'
    if isinstance(leaf, BoundPolicy):
      raise TypeError(f'`{where}`: a BoundPolicy must be the whole '
                      '`max_trust_ratio`, not a leaf of a per-layer tree.')
    if callable(leaf):
      continue
    if jnp.ndim(leaf) == 0:
      _validation.check_number(where, leaf)
      continue
    _validation.reject_bool(where, leaf)
    values = jnp.asarray(leaf)
    if not isinstance(leaf, jax.core.Tracer) and bool(
        jnp.any(jnp.isnan(values) | (values < 0))):
      raise ValueError(f'`{where}` must be >= 0 and not NaN; got {leaf!r}.')


def _concrete_entries(spec: BoundSpec) -> dict[tuple[str, ...], Any]:
  """Path -> concrete number or array, for the leaves that are not schedules."""
  if spec is None or callable(spec) or isinstance(spec, BoundPolicy):
    return {}
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(spec)[0]:
    if callable(leaf) or isinstance(leaf, jax.core.Tracer):
      continue
    out[tuple(_validation.key_str(k) for k in path)] = leaf
  return out


def check_bound_order(min_spec: BoundSpec, max_spec: BoundSpec,
                      min_name: str = 'min_trust_ratio',
                      max_name: str = 'max_trust_ratio') -> None:
  """Raises ``ValueError`` where a concrete lower bound exceeds the upper.

  Scalars and per-layer trees are compared entry by entry wherever one entry's
  path is a prefix of the other's (a scalar applies everywhere).
  """
  lows, highs = _concrete_entries(min_spec), _concrete_entries(max_spec)
  for lp, lo in lows.items():
    for hp, hi in highs.items():
      n = min(len(lp), len(hp))
      if lp[:n] != hp[:n]:
        continue
      try:
        bad = bool(jnp.any(jnp.asarray(lo) > jnp.asarray(hi)))
      except (TypeError, ValueError):  # shapes that do not broadcast
        continue
      if bad:
        where = '/'.join(lp if len(lp) >= len(hp) else hp)
        at = f' at {where!r}' if where else ''
        raise ValueError(
            f'`{min_name}` ({lo!r}) must not exceed `{max_name}` ({hi!r})'
            f'{at}.')


def make_resolver(count: jax.Array, params: optax.Params, template: RatioTree,
                  *, strict: bool = True) -> Resolver:
  """Returns ``resolve(spec, default)`` for one step.

  ``params`` and ``template`` have the same structure (masked leaves are
  ``optax.MaskedNode``); ``strict`` as in ``_validation.per_leaf``. The
  result is a RatioTree in the template's dtypes and per-layer shapes.
  """

  def value(spec):
    return spec(count) if callable(spec) else spec

  def resolve(spec: BoundSpec, default: float, name: str = 'bound'
              ) -> RatioTree:
    if spec is None:
      return jax.tree.map(lambda t: jnp.full_like(t, default), template)
    if callable(spec) or is_scalar_spec(spec):
      v = value(spec)
      return jax.tree.map(lambda t: jnp.full_like(t, v), template)
    values = _validation.per_leaf(spec, params, name, strict=strict)
    flat = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for (path, t), b in zip(flat[0], values, strict=True):
      b = jnp.asarray(value(b), t.dtype)
      if b.ndim and b.shape != t.shape:
        raise ValueError(
            f'`{name}` at {_validation.path_str(path)!r} has shape {b.shape};'
            f' it must be a scalar or have the layer axes\' shape {t.shape}.')
      out.append(jnp.broadcast_to(b, t.shape))
    return jax.tree.unflatten(flat[1], out)

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
    >>> state = opt.init(params)
    >>> _, state = opt.update(params, state, params)
    >>> stats = optax_lambc.trust_ratio_stats(state)
    >>> print(f"{float(stats.lower['w']):.4f} {float(stats.upper['w']):.1f}")
    0.0909 11.0

  References:
    Luo et al., `Adaptive Gradient Methods with Dynamic Bound of Learning Rate
    <https://arxiv.org/abs/1902.09843>`_, ICLR 2019.
  """
  check_bound('final', final)
  _validation.check_positive('gamma', gamma)

  def init(template):
    del template
    return optax.EmptyState()

  def bounds(state, count, resolve):
    del state
    b = resolve(final, 1.0)
    t = lambda x: count.astype(x.dtype) + 1  # noqa: E731  (1-based step)
    lower = jax.tree.map(lambda x: x * (1 - 1 / (gamma * t(x) + 1)), b)
    upper = jax.tree.map(lambda x: x * (1 + 1 / (gamma * t(x))), b)
    return lower, upper

  def update(raw, applied, state, count):
    del raw, applied, count
    return state

  return BoundPolicy(f'dynamic_bounds(final={final!r}, gamma={gamma!r})',
                     init, bounds, update)


# ---------------------------------------------------------------------------
# Running-statistics bounds after ALRC.


class RunningStatBoundsState(NamedTuple):
  """Per-layer (per stacked layer) EW mean and variance of the ratio."""

  count: RatioTree  # int32 per layer: observations absorbed so far.
  mean: RatioTree  # EW mean (the first observation seeds it).
  var: RatioTree  # EW variance (0 after the first observation).


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
  (the incremental form of Finch 2009, stable in float32 where
  :math:`E[x^2] - E[x]^2` cancels):

  .. math::
    \delta = x - \mu,\quad \mu \leftarrow \mu + \alpha\delta,\quad
    \sigma^2 \leftarrow (1 - \alpha)(\sigma^2 + \alpha\delta^2),\qquad
    [\text{lower}, \text{upper}] = [\mu - n\sigma,\; \mu + n\sigma]
    \cap [\text{min}, \text{max}].

  The first observation sets :math:`\mu = x, \sigma^2 = 0` (no bias
  correction needed). For the first ``warmup_steps`` steps only the fixed
  ``[min, max]`` applies. As in ALRC, the statistics absorb the *applied*
  (clipped) ratio, so one outlier does not widen the band; a non-finite ratio
  is not absorbed. Bounds are layer-wise by construction, answering the LAMBC
  paper's "one bound for all layers" limitation (Sec. 5). Pass the policy as
  ``max_trust_ratio``.

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
    >>> stats = optax_lambc.trust_ratio_stats(state)
    >>> bool(stats.lower['w'] <= stats.applied['w'] <= stats.upper['w'])
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
  if is_scalar_spec(n_std):
    _validation.check_positive('n_std', n_std)
  _validation.check_number('decay', decay, upper=1.0)
  if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int):
    raise ValueError(f'`warmup_steps` must be an int, got {warmup_steps!r}.')
  if warmup_steps < 1:
    raise ValueError(f'`warmup_steps` must be >= 1, got {warmup_steps!r}.')
  _validation.check_number('min_trust_ratio', min_trust_ratio)
  if max_trust_ratio is not None:
    _validation.check_number('max_trust_ratio', max_trust_ratio)
    check_bound_order(min_trust_ratio, max_trust_ratio)
  hi_fixed = math.inf if max_trust_ratio is None else max_trust_ratio

  def init(template):
    return RunningStatBoundsState(
        count=jax.tree.map(lambda t: jnp.zeros(t.shape, jnp.int32),
                           template),
        mean=jax.tree.map(jnp.zeros_like, template),
        var=jax.tree.map(jnp.zeros_like, template))

  def bounds(state, count, resolve):
    n = resolve(n_std, 3.0)
    off = count < warmup_steps

    def band(k, mu, var, n):
      sigma = jnp.sqrt(var)
      lo = jnp.maximum(mu - n * sigma, min_trust_ratio)
      hi = jnp.minimum(mu + n * sigma, hi_fixed)
      fixed = off | (k == 0)
      return (jnp.where(fixed, jnp.asarray(min_trust_ratio, mu.dtype), lo),
              jnp.where(fixed, jnp.asarray(hi_fixed, mu.dtype), hi))

    pairs = jax.tree.map(band, state.count, state.mean, state.var, n)
    lower = jax.tree.map(lambda _, p: p[0], state.mean, pairs)
    upper = jax.tree.map(lambda _, p: p[1], state.mean, pairs)
    return lower, upper

  def update(raw, applied, state, count):
    del raw, count
    alpha = 1 - decay

    def absorb(k, mu, var, x):
      ok = jnp.isfinite(x)
      first = k == 0
      delta = jnp.where(ok, x - mu, 0)
      new_mu = jnp.where(first, x, mu + alpha * delta)
      new_var = jnp.where(first, 0, (1 - alpha) * (var + alpha * delta * delta))
      return (jnp.where(ok, k + 1, k), jnp.where(ok, new_mu, mu),
              jnp.where(ok, new_var, var))

    out = jax.tree.map(absorb, state.count, state.mean, state.var, applied)
    field = lambda i: jax.tree.map(lambda _, o: o[i], state.mean, out)
    return RunningStatBoundsState(field(0), field(1), field(2))

  return BoundPolicy(
      f'running_stat_bounds(n_std={n_std!r}, decay={decay!r}, '
      f'warmup_steps={warmup_steps!r})', init, bounds, update)
