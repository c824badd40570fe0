"""Layer-wise trust ratio, clipped into [min_trust_ratio, max_trust_ratio]."""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import MaskedNode

from optax_lambc import _validation
from optax_lambc import bounds as bounds_lib


class ScaleByClippedTrustRatioState(NamedTuple):
  """State of :func:`scale_by_clipped_trust_ratio`.

  Every field but ``count`` and ``policy_state`` holds one scalar per layer,
  shaped like the params, with ``optax.MaskedNode`` where a layer is not
  adapted. The values are those of the last update (raw and applied ratio 1,
  bounds ``[0, inf]`` before the first).
  """

  count: jax.Array  # int32 scalar: number of updates so far.
  raw_ratio: Any  # trust_coefficient * phi(|w|) / (|u| + eps), 1 at zero norm.
  applied_ratio: Any  # raw ratio clipped into [lower, upper].
  lower: Any  # lower bound in force at the last update.
  upper: Any  # upper bound in force at the last update (inf: none).
  policy_state: Any  # a BoundPolicy's state, or optax.EmptyState().


def norm_dtype(dtype: Any) -> jnp.dtype:
  """Norms of bf16/fp16 leaves are taken in float32; float64 stays float64."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    dtype = jnp.finfo(dtype).dtype
  return jnp.promote_types(dtype, jnp.float32)


def layer_norm(x: jax.Array, axis_name: Any = None) -> jax.Array:
  """The Euclidean norm of a whole leaf, reduced over ``axis_name`` if given.

  Args:
    x: A floating-point (or complex) array.
    axis_name: Name(s) of mapped axes (``shard_map``/``pmap``) over which the
      leaf is sharded; the squared norms are summed across them.

  Returns:
    A scalar in :func:`norm_dtype` of ``x``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> optax_lambc.layer_norm(jnp.array([[3.0], [4.0]]))
    Array(5., dtype=float32)
    >>> optax_lambc.layer_norm(jnp.ones(4, jnp.bfloat16)).dtype
    dtype('float32')
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if axis_name is None:
    # jnp.linalg.norm reduces exactly as optax.lamb does (bit-identical).
    return jnp.linalg.norm(x)
  sq = jnp.sum(jnp.real(x * jnp.conj(x)))
  return jnp.sqrt(jax.lax.psum(sq, axis_name))


def raw_trust_ratio(param_norm: jax.Array, update_norm: jax.Array,
                    trust_coefficient: Any = 1.0, eps: Any = 0.0,
                    weight_norm_bounds: Any = None) -> jax.Array:
  """``trust_coefficient * phi(|w|) / (|u| + eps)``; 1 at zero norm, NaN if |u|
  is not finite."""
  phi = param_norm
  if weight_norm_bounds is not None:
    lo, hi = weight_norm_bounds
    phi = jnp.clip(phi, lo, math.inf if hi is None else hi)
  ratio = trust_coefficient * phi / (update_norm + eps)
  ratio = jnp.where((param_norm == 0) | (update_norm == 0), 1, ratio)
  return jnp.where(jnp.isfinite(update_norm), ratio, jnp.nan).astype(
      param_norm.dtype)


def resolve_mask(mask: Any, params: Any, name: str = 'mask') -> Any:
  """A tree of Python bools shaped like ``params`` (True: adapt the layer)."""
  if mask is None:
    return jax.tree.map(lambda _: True, params)
  tree = mask(params) if callable(mask) else mask
  full = _validation.broadcast_prefix(tree, params, name)
  for path, m in jax.tree_util.tree_flatten_with_path(full)[0]:
    if not isinstance(m, bool) and not (hasattr(m, 'dtype') and jnp.ndim(m)
                                        == 0 and m.dtype == bool):
      raise TypeError(f'`{name}` leaf {_validation.path_str(path)!r} must be '
                      f'a Python bool, got {m!r}.')
  return jax.tree.map(bool, full)


def ratio_template(params: Any, mask: Any) -> Any:
  """One zero scalar per adapted layer; ``MaskedNode`` elsewhere."""
  return jax.tree.map(
      lambda p, m: jnp.zeros([], norm_dtype(p.dtype)) if m else MaskedNode(),
      params, mask)


def initial_state(template: Any,
                  policy_state: Any = None) -> ScaleByClippedTrustRatioState:
  """The state before the first update: ratios 1, bounds ``[0, inf]``."""
  ones = jax.tree.map(jnp.ones_like, template)
  return ScaleByClippedTrustRatioState(
      count=jnp.zeros([], jnp.int32), raw_ratio=ones, applied_ratio=ones,
      lower=jax.tree.map(jnp.zeros_like, template),
      upper=jax.tree.map(lambda t: jnp.full_like(t, jnp.inf), template),
      policy_state=optax.EmptyState() if policy_state is None else
      policy_state)


def check_bounds(min_trust_ratio: Any, max_trust_ratio: Any) -> None:
  """Build-time checks of the two bound arguments."""
  if isinstance(min_trust_ratio, bounds_lib.BoundPolicy):
    raise ValueError(
        f'`min_trust_ratio` got the bound policy {min_trust_ratio.name}; pass '
        'policies as `max_trust_ratio`: a policy sets both bounds, and '
        '`min_trust_ratio` then only raises its lower bound.')
  bounds_lib.check_bound('min_trust_ratio', min_trust_ratio)
  if min_trust_ratio is None:
    raise ValueError('`min_trust_ratio` must not be None; use 0.0 for no '
                     'lower bound.')
  bounds_lib.check_bound('max_trust_ratio', max_trust_ratio)
  bounds_lib.check_bound_order(min_trust_ratio, max_trust_ratio)


def scale_by_clipped_trust_ratio(
    min_trust_ratio: Any = 0.0,
    max_trust_ratio: Any = 1.0,
    *,
    trust_coefficient: Any = 1.0,
    eps: Any = 0.0,
    weight_norm_bounds: tuple[Any, Any] | None = None,
    mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformation:
  r"""Scales each layer's update by its trust ratio, clipped into bounds.

  For each leaf ("layer") with parameter :math:`w` and incoming update
  :math:`u`:

  .. math::
    \gamma = \frac{c\,\phi(\lVert w\rVert)}{\lVert u\rVert + \epsilon},\qquad
    u \leftarrow \operatorname{clip}(\gamma, \text{lower}, \text{upper})\,u,

  with :math:`\gamma = 1` where :math:`\lVert w\rVert = 0` or
  :math:`\lVert u\rVert = 0` (a fresh zero-initialised layer still moves; the 1
  is then clipped like any ratio, as in the LAMBC authors' code). :math:`\phi`
  is the identity unless ``weight_norm_bounds=(lo, hi)`` clamps
  :math:`\lVert w\rVert` (the LAMB paper's :math:`\phi`; torch-optimizer's
  ``clamp_value``). "Clipping" here is the LAMBC/timm/DeepSpeed clamp on the
  *ratio*, not a clamp on :math:`\lVert w\rVert` and not LARC's clamp relative
  to the learning rate (see :func:`optax_lambc.larc`).

  The transform is optimizer-agnostic: put it after any direction (Adam, SGD
  momentum, Lion) and before the learning rate.

  Decisions:
    * The LAMBC paper's Eq. 3 writes :math:`\mu` for both bounds; we read it as
      :math:`\text{clip}(\gamma, \text{min\_trust\_ratio},
      \text{max\_trust\_ratio})` and recommend an upper bound of 1.0 (the
      paper's and its authors' choice), which is the default.
    * If a schedule makes the lower bound exceed the upper at run time, the
      upper bound wins.
    * Norms of bf16/fp16 leaves are computed in float32 (float64 stays
      float64); the scaled update keeps the leaf's dtype.
    * A non-finite update norm gives a NaN raw ratio and a NaN update: nothing
      is silently zeroed. Wrap the optimizer in ``optax.apply_if_finite`` to
      skip such steps. The state records the raw and applied ratios of the last
      step, so :func:`optax_lambc.trust_ratio_stats` shows it.
    * Every layer is adapted by default, as in ``optax.lamb``; pass ``mask``
      (e.g. :func:`optax_lambc.exclude_bias_and_norm`) to let biases and
      normalisation parameters pass through unscaled, as TF-Addons and timm do.

  Args:
    min_trust_ratio: Lower bound: a number, a schedule of the step count, or a
      per-layer tree (see :mod:`optax_lambc.bounds`). 0.0 means none.
    max_trust_ratio: Upper bound: ``None`` (none), a number, a schedule, a
      per-layer tree, or a :class:`optax_lambc.BoundPolicy`, which then sets
      both bounds (``min_trust_ratio`` only raises its lower bound).
    trust_coefficient: The multiplier :math:`c` of the ratio.
    eps: Added to :math:`\lVert u\rVert` in the denominator.
    weight_norm_bounds: ``(lo, hi)`` clamping :math:`\lVert w\rVert` (``hi``
      may be None), or None for no clamp.
    mask: A tree of bools that is a prefix of the params, or a callable
      returning one from the params; False leaves pass through unscaled.
    axis_name: Mapped axis name(s) over which params are *manually* sharded
      (``shard_map``, FSDP by hand), so that norms are global. Leave None under
      ``jax.jit`` with shardings (GSPMD reduces automatically) and when params
      are replicated.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ScaleByClippedTrustRatioState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_lambc
    >>> opt = optax.chain(
    ...     optax.trace(decay=0.9),
    ...     optax_lambc.scale_by_clipped_trust_ratio(max_trust_ratio=1.0),
    ...     optax.scale_by_learning_rate(0.1))
    >>> params = {'w': jnp.array([3.0, 4.0])}      # |w| = 5
    >>> grads = {'w': jnp.array([0.6, 0.8])}       # |u| = 1: ratio 5 -> 1
    >>> updates, state = opt.update(grads, opt.init(params), params)
    >>> print(updates['w'].round(4))
    [-0.06 -0.08]

  References:
    Fong, Chen & Chen, `Improving Layer-wise Adaptive Rate Methods using Trust
    Ratio Clipping <https://arxiv.org/abs/2011.13584>`_, 2020.

    You et al., `Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes <https://arxiv.org/abs/1904.00962>`_, ICLR 2020.
  """
  check_bounds(min_trust_ratio, max_trust_ratio)
  _validation.check_number('trust_coefficient', trust_coefficient)
  _validation.check_number('eps', eps)
  if weight_norm_bounds is not None:
    lo, hi = weight_norm_bounds
    _validation.check_number('weight_norm_bounds[0]', lo)
    if hi is not None:
      _validation.check_number('weight_norm_bounds[1]', hi)
      bounds_lib.check_bound_order(lo, hi, 'weight_norm_bounds[0]',
                                   'weight_norm_bounds[1]')
  policy = (max_trust_ratio if isinstance(max_trust_ratio,
                                          bounds_lib.BoundPolicy) else None)

  def init_fn(params):
    _validation.check_float_leaves(params, 'params')
    template = ratio_template(params, resolve_mask(mask, params))
    return initial_state(template, policy.init(template) if policy else None)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(_validation.NO_PARAMS_MSG)
    _validation.check_updates_and_params(updates, params)
    adapt = resolve_mask(mask, params)
    template = ratio_template(params, adapt)
    resolve = bounds_lib.make_resolver(state.count, params, adapt, template)
    lower = resolve(min_trust_ratio, 0.0)
    if policy is None:
      upper = resolve(max_trust_ratio, math.inf)
    else:
      p_lower, upper = policy.bounds(state.policy_state, state.count, resolve)
      lower = jax.tree.map(jnp.maximum, lower, p_lower)

    # Flat lists over the adapted layers, in params order.
    flat_u, treedef = jax.tree.flatten(updates)
    flat_p = treedef.flatten_up_to(params)
    flat_m = treedef.flatten_up_to(adapt)
    lo_l, hi_l = jax.tree.leaves(lower), jax.tree.leaves(upper)
    raw_l, app_l, out = [], [], []
    for u, p, m in zip(flat_u, flat_p, flat_m, strict=True):
      if not m:
        out.append(u)
        continue
      raw = raw_trust_ratio(layer_norm(p, axis_name), layer_norm(u, axis_name),
                            trust_coefficient, eps, weight_norm_bounds)
      i = len(raw_l)
      applied = jnp.minimum(jnp.maximum(raw, lo_l[i]), hi_l[i])
      raw_l.append(raw)
      app_l.append(applied)
      out.append((u * applied).astype(u.dtype))

    t_def = jax.tree.structure(template)
    raw_tree = jax.tree.unflatten(t_def, raw_l)
    applied_tree = jax.tree.unflatten(t_def, app_l)
    policy_state = (policy.update(raw_tree, applied_tree, state.policy_state,
                                  state.count)
                    if policy else state.policy_state)
    new_state = ScaleByClippedTrustRatioState(
        count=optax.safe_increment(state.count),
        raw_ratio=raw_tree, applied_ratio=applied_tree,
        lower=lower, upper=upper, policy_state=policy_state)
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformation(init_fn, update_fn)
