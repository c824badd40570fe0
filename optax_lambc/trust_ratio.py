"""LAMBC's transform: the layer-wise trust ratio, clipped into bounds."""

import math

import jax
import jax.numpy as jnp
import optax

from optax_lambc import _validation
from optax_lambc import bounds as bounds_lib
from optax_lambc import layers
from optax_lambc.layers import ScaleByClippedTrustRatioState


def phi(param_norm: jax.Array,
        weight_norm_bounds: tuple[float, float | None] | None) -> jax.Array:
  """The LAMB paper's scaling function: ``|w|`` clamped into ``(lo, hi)``."""
  if weight_norm_bounds is None:
    return param_norm
  lo, hi = weight_norm_bounds
  return jnp.clip(param_norm, lo, math.inf if hi is None else hi)


def check_bounds(min_trust_ratio: bounds_lib.BoundSpec,
                 max_trust_ratio: bounds_lib.BoundSpec) -> None:
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
    min_trust_ratio: bounds_lib.BoundSpec = 0.0,
    max_trust_ratio: bounds_lib.BoundSpec = 1.0,
    *,
    trust_coefficient: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 0.0,
    weight_norm_bounds: tuple[float, float | None] | None = None,
    mask: optax.MaskOrFn = None,
    layer_axes: layers.LayerAxes = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformation:
  r"""Scales each layer's update by its trust ratio, clipped into bounds.

  For each leaf ("layer") with parameter :math:`w` and incoming update
  :math:`u`:

  .. math::
    \gamma = \frac{c\,\phi(\lVert w\rVert)}{\lVert u\rVert + \epsilon},\qquad
    u \leftarrow \operatorname{clip}(\gamma, \text{lower}, \text{upper})\,u,

  with :math:`\gamma = 1` where :math:`\lVert w\rVert = 0` or
  :math:`\lVert u\rVert = 0` (a fresh zero-initialised layer still moves; the 1
  is then clipped like any ratio, as in the LAMBC authors' code). A "layer" is a
  leaf, or each slice of a stacked leaf along its ``layer_axes`` (scanned
  transformer blocks), see :mod:`optax_lambc.layers`. :math:`\phi`
  is the identity unless ``weight_norm_bounds=(lo, hi)`` clamps
  :math:`\lVert w\rVert` (the LAMB paper's :math:`\phi`; torch-optimizer's
  ``clamp_value``). "Clipping" here is the LAMBC/timm/DeepSpeed clamp on the
  *ratio*, not a clamp on :math:`\lVert w\rVert` and not LARC's clamp relative
  to the learning rate (see :func:`optax_lambc.larc`).

  The transform is optimizer-agnostic: put it after any direction (Adam, SGD
  momentum, Lion) and before the learning rate.

  Every rule where the paper is ambiguous or peers differ (bound notation,
  zero norms, NaN/Inf, precision, masks, negative bounds) is listed once, in
  the README's "Semantics and decisions"; the per-layer rules are in
  :mod:`optax_lambc.layers`.

  Args:
    min_trust_ratio: Lower bound: a number, a schedule of the step count, or a
      per-layer tree (see :mod:`optax_lambc.bounds`). 0.0 means none.
    max_trust_ratio: Upper bound: ``None`` (none), a number, a schedule, a
      per-layer tree, or a :class:`optax_lambc.BoundPolicy`, which then sets
      both bounds (``min_trust_ratio`` only raises its lower bound).
    trust_coefficient: The multiplier :math:`c` of the ratio (> 0).
    eps: Added to :math:`\lVert u\rVert` in the denominator.
    weight_norm_bounds: ``(lo, hi)`` clamping :math:`\lVert w\rVert` (``hi``
      may be None), or None for no clamp.
    mask: A tree of bools that is a prefix of the params, or a callable
      returning one from the params; False leaves pass through unscaled. It is
      applied with ``optax.masked``.
    layer_axes: Which axes of each leaf index stacked layers: a tree prefix of
      the params (or a callable params -> such a tree, e.g.
      :func:`optax_lambc.layer_axes_from_flax`) of ``None`` (the whole leaf is
      one layer, the default), an int or a tuple of ints.
    axis_name: Mapped axis name(s) over which params are *manually* sharded
      (``shard_map``, FSDP by hand), so that norms are global. Leave None under
      ``jax.jit`` with shardings (GSPMD reduces automatically) and when params
      are replicated.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ScaleByClippedTrustRatioState` (inside an ``optax.MaskedState``
    when ``mask`` is given).

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

    A stacked leaf holding two layers gets one ratio per layer:

    >>> t = optax_lambc.scale_by_clipped_trust_ratio(
    ...     max_trust_ratio=None, layer_axes=0)
    >>> params = jnp.array([[3.0, 4.0], [0.3, 0.4]])   # |w| = 5 and 0.5
    >>> u = jnp.array([[0.6, 0.8], [0.6, 0.8]])       # |u| = 1 for each
    >>> _, s = t.update(u, t.init(params), params)
    >>> print(s.raw_ratio)
    [5.  0.5]

  References:
    Fong, Chen & Chen, `Improving Layer-wise Adaptive Rate Methods using Trust
    Ratio Clipping <https://arxiv.org/abs/2011.13584>`_, 2020.

    You et al., `Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes <https://arxiv.org/abs/1904.00962>`_, ICLR 2020.
  """
  check_bounds(min_trust_ratio, max_trust_ratio)
  _validation.check_positive('trust_coefficient', trust_coefficient)
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
  # Inside optax.masked the transform sees a masked view of the params, where
  # per-layer trees may name masked-out leaves; they are checked strictly on
  # the full params first (layers.masked_with_checks).
  strict = mask is None

  def bounds_at(count, policy_state, params, template):
    """Lower and upper bounds in force at step ``count``, clamped at 0."""
    resolve = bounds_lib.make_resolver(count, params, template, strict=strict)
    lower = resolve(min_trust_ratio, 0.0, 'min_trust_ratio')
    if policy is None:
      upper = resolve(max_trust_ratio, math.inf, 'max_trust_ratio')
    else:
      p_lower, upper = policy.bounds(policy_state, count, resolve)
      lower = jax.tree.map(jnp.maximum, lower, p_lower)
    clamp = lambda tree: jax.tree.map(lambda b: jnp.maximum(b, 0), tree)
    return clamp(lower), clamp(upper)

  def template_of(params):
    axes = layers.resolve_layer_axes(layer_axes, params, strict=strict)
    return axes, layers.ratio_template(params, axes)

  def init_fn(params):
    _validation.check_float_leaves(params, 'params')
    _, template = template_of(params)
    policy_state = policy.init(template) if policy else None
    count = jnp.zeros([], jnp.int32)
    lower, upper = bounds_at(count, policy_state, params, template)
    return layers.initial_state(template, lower, upper, policy_state)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(_validation.NO_PARAMS_MSG)
    _validation.check_updates_and_params(updates, params)
    axes, template = template_of(params)
    lower, upper = bounds_at(state.count, state.policy_state, params,
                             template)

    def raw_fn(u, p, ax, i):
      del i
      w_norm = layers.leaf_norm(p, ax, axis_name)
      u_norm = layers.leaf_norm(u, ax, axis_name)
      num = trust_coefficient * phi(w_norm, weight_norm_bounds)
      return layers.trust_ratio(num, u_norm + eps, w_norm, u_norm), u

    out, raw, applied = layers.scale_layers(raw_fn, updates, params, axes,
                                            lower, upper)
    policy_state = (policy.update(raw, applied, state.policy_state,
                                  state.count)
                    if policy else state.policy_state)
    return out, ScaleByClippedTrustRatioState(
        count=optax.safe_increment(state.count), raw_ratio=raw,
        applied_ratio=applied, lower=lower, upper=upper,
        policy_state=policy_state)

  return layers.masked_with_checks(
      optax.GradientTransformation(init_fn, update_fn), mask, 'mask',
      layer_axes, {'min_trust_ratio': min_trust_ratio,
                   'max_trust_ratio': max_trust_ratio})
