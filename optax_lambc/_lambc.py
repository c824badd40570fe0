"""LAMBC: LAMB whose layer-wise trust ratio is clipped into bounds."""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_lambc import _bounds
from optax_lambc import _layers
from optax_lambc._layers import BoundTree, LayerAxes


class ScaleByClippedTrustRatioState(NamedTuple):
  """State of the layer-wise transforms (LAMBC's clipped ratio and LARC's).

  Per-layer fields are vectors with one entry per adapted layer: every leaf in
  ``jax.tree.leaves`` order, each stacked leaf contributing one entry per
  slice. :func:`optax_lambc.trust_ratio_stats` reads them by parameter path.
  """

  count: jax.Array
  """int32 scalar: the number of updates so far."""
  raw_ratio: jax.Array
  """The unclipped ratio of the last update (1 before the first; NaN after a
  non-finite update)."""
  applied_ratio: jax.Array
  """The raw ratio clipped into ``[lower, upper]``."""
  lower: jax.Array
  """The lower bound in force at the last update (at step 0 before it)."""
  upper: jax.Array
  """The upper bound in force (``inf``: none)."""
  policy_state: optax.OptState
  """A :class:`optax_lambc.BoundPolicy`'s state, or ``optax.EmptyState()``."""
  layers: optax.Params
  """Params-shaped: each adapted leaf's layer grid, an ``int32`` array shaped
  like the leaf with its non-layer axes set to 1, holding its layers' indices
  in the vectors; ``optax.MaskedNode`` where the leaf is not adapted. It
  records the layer axes (read off its shapes by ``update``) and the names
  the telemetry uses (its paths)."""


# (param norms, update norms, count) -> raw ratios, all vectors.
RatioFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# (adapted update leaves, their params, count) -> the leaves to scale.
DirectionFn = Callable[[list[jax.Array], list[jax.Array], jax.Array],
                       list[jax.Array]]


def layerwise(ratio_fn: RatioFn, lower: BoundTree,
              upper: BoundTree | _bounds.BoundPolicy | None,
              layer_axes: LayerAxes, axis_name: str | tuple[str, ...] | None,
              direction_fn: DirectionFn | None = None
              ) -> optax.GradientTransformation:
  """The per-layer step LAMBC and LARC share: norms, ratio, clip, scale.

  ``ratio_fn`` turns the norm vectors into raw ratios, which are clipped into
  ``[lower, upper]`` (a policy as ``upper`` sets both; ``lower`` then only
  raises its lower bound; both clamped at 0), and each leaf of
  ``direction_fn``'s output (default: the updates) is scaled by its layers'
  applied ratios. Leaves given as ``optax.MaskedNode`` pass through.
  """
  policy = upper if isinstance(upper, _bounds.BoundPolicy) else None

  def bounds_at(count, policy_state, layers, dtype):
    resolve = _bounds.resolver(count, layers, dtype)
    lo, hi = (resolve(lower, 0.0, 'min_trust_ratio'),
              None if policy else resolve(upper, math.inf, 'max_trust_ratio'))
    if policy is not None:
      p_lo, hi = policy.bounds(policy_state, count, resolve)
      lo = jnp.maximum(lo, p_lo)
    return (jnp.maximum(lo, 0).astype(dtype), jnp.maximum(hi, 0).astype(dtype))

  def init_fn(params):
    layers, n, dtype = _layers.layer_record(params, layer_axes)
    count = jnp.zeros([], jnp.int32)
    policy_state = (optax.EmptyState() if policy is None else
                    policy.init(jnp.zeros([n], dtype)))
    lo, hi = bounds_at(count, policy_state, layers, dtype)
    return ScaleByClippedTrustRatioState(
        count, jnp.ones([n], dtype), jnp.ones([n], dtype), lo, hi,
        policy_state, layers)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(_layers.NO_PARAMS_MSG)
    treedef = jax.tree.structure(updates, is_leaf=_layers.is_masked)
    try:
      flat_p = treedef.flatten_up_to(params)
    except (ValueError, TypeError) as e:
      raise ValueError(
          'updates and params must have the same tree structure; got updates '
          f'{treedef} and params {jax.tree.structure(params)}.') from e
    flat_u = treedef.flatten_up_to(updates)
    for (keys, u), p in zip(_layers.flat_params(updates), flat_p,
                            strict=True):
      if not _layers.is_masked(u) and jnp.shape(u) != jnp.shape(p):
        raise ValueError(
            f'updates leaf {_layers.path_str(keys)!r} has shape '
            f'{jnp.shape(u)} but the params leaf has shape {jnp.shape(p)}.')
    adapted = _layers.adapted(state.layers, treedef)
    us, ps = ([seq[i] for i, _, _ in adapted] for seq in (flat_u, flat_p))
    dtype, count = state.raw_ratio.dtype, state.count
    w_norm, u_norm = _layers.layer_norms(
        [ps, us], [g for _, _, g in adapted], dtype, axis_name)
    lo, hi = bounds_at(count, state.policy_state, state.layers, dtype)
    raw = ratio_fn(w_norm, u_norm, count)
    applied = jnp.minimum(jnp.maximum(raw, lo), hi)  # the upper bound wins
    directions = direction_fn(us, ps, count) if direction_fn else us
    out = list(flat_u)
    for (i, offset, g), d in zip(adapted, directions, strict=True):
      out[i] = _layers.scale(d, applied, offset, g)
    policy_state = (state.policy_state if policy is None else
                    policy.update(raw, applied, state.policy_state, count))
    return jax.tree.unflatten(treedef, out), ScaleByClippedTrustRatioState(
        optax.safe_increment(count), raw, applied, lo, hi, policy_state,
        state.layers)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_clipped_trust_ratio(
    min_trust_ratio: BoundTree = 0.0,
    max_trust_ratio: BoundTree | _bounds.BoundPolicy | None = 1.0, *,
    trust_coefficient: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 0.0,
    weight_norm_bounds: tuple[float, float | None] | None = None,
    mask: optax.MaskOrFn = None, layer_axes: LayerAxes = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales each layer's update by its trust ratio, clipped into bounds.

  For each layer with parameter :math:`w` and incoming update :math:`u`:

  .. math::
    \gamma = \frac{c\,\phi(\lVert w\rVert)}{\lVert u\rVert + \epsilon},\qquad
    u \leftarrow \operatorname{clip}(\gamma, \text{lower}, \text{upper})\,u,

  with :math:`\gamma = 1` where :math:`\lVert w\rVert = 0` or
  :math:`\lVert u\rVert = 0` (a fresh zero-initialised layer still moves; the
  1 is then clipped like any ratio, as in the LAMBC authors' code) and NaN
  where :math:`\lVert u\rVert` is not finite (never a silent zero step). If a
  lower bound exceeds the upper one at run time, the upper wins; bounds are
  clamped at 0. :math:`\phi` is the identity unless ``weight_norm_bounds=(lo,
  hi)`` clamps :math:`\lVert w\rVert` (the LAMB paper's :math:`\phi`). Norms of
  bf16/fp16 leaves are taken in float32; updates keep their dtype.

  "Clipping" here is the LAMBC/timm/DeepSpeed clamp on the *ratio*: not a clamp
  on :math:`\lVert w\rVert` and not LARC's clamp relative to the learning rate
  (:func:`optax_lambc.larc`). The transform is optimizer-agnostic: put it
  after any direction (Adam, SGD momentum, Lion) and before the learning rate.

  A *layer* is a params leaf, or each slice of a stacked leaf (the blocks of a
  scanned transformer) along its ``layer_axes``. Everything that depends on
  the params (the layers, masks, a callable ``layer_axes``) is resolved by
  ``init`` and kept in the state, so one transform serves any number of
  models.

  Args:
    min_trust_ratio: Lower bound (:data:`optax_lambc.BoundTree`): a number, a
      schedule of the step count, or a per-layer tree (a tree prefix of the
      params, matched by key path, of numbers, schedules or arrays of a
      stacked leaf's layer-axes shape). 0.0 means none.
    max_trust_ratio: Upper bound: ``None`` (none), a
      :data:`optax_lambc.BoundTree`, or a :class:`optax_lambc.BoundPolicy`,
      which then sets both bounds (``min_trust_ratio`` only raises its lower
      bound).
    trust_coefficient: The multiplier :math:`c` of the ratio (> 0).
    eps: Added to :math:`\lVert u\rVert` in the denominator.
    weight_norm_bounds: ``(lo, hi)`` clamping :math:`\lVert w\rVert` (``hi``
      may be None), or None for no clamp.
    mask: A bool tree (prefix of the params) or a callable returning one,
      resolved once by ``init``; False leaves pass through unscaled. A
      callable that takes a ``layer_axes`` keyword, such as
      :func:`optax_lambc.exclude_bias_and_norm`, is given this transform's.
    layer_axes: Which axes of each leaf index stacked layers
      (:data:`optax_lambc.LayerAxes`): a tree prefix of the params, or a
      callable params -> such a tree (e.g.
      :func:`optax_lambc.layer_axes_from_flax`) that ``init`` calls on what
      it is given; leaves are ``None`` (the whole leaf is one layer, the
      default), an int or a tuple of ints (NumPy ints too).
    axis_name: Mapped axis name(s) over which params are sharded by hand
      (``shard_map``), so that norms are global. Leave None under ``jax.jit``
      with shardings (XLA reduces across devices itself).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ScaleByClippedTrustRatioState` (inside a
    :class:`optax_lambc.FixedMaskState` when ``mask`` is given).

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
  if isinstance(min_trust_ratio, _bounds.BoundPolicy) or (
      min_trust_ratio is None):
    raise ValueError(
        f'`min_trust_ratio` must be a bound, got {min_trust_ratio!r}: use 0.0 '
        'for no lower bound, and pass a policy as `max_trust_ratio` (it sets '
        'both bounds; `min_trust_ratio` then only raises its lower bound).')
  lo, hi = weight_norm_bounds or (0.0, None)
  _bounds.check_bounds(('min_trust_ratio', min_trust_ratio),
                       ('max_trust_ratio', max_trust_ratio))
  _bounds.check_bounds(('weight_norm_bounds[0]', lo),
                       ('weight_norm_bounds[1]', hi))
  _layers.check_number('trust_coefficient', trust_coefficient, positive=True)
  _layers.check_number('eps', eps)

  def ratio_fn(w_norm, u_norm, count):
    del count
    phi = w_norm if weight_norm_bounds is None else jnp.clip(
        w_norm, lo, math.inf if hi is None else hi)
    return _layers.ratio(trust_coefficient * phi, u_norm + eps, w_norm,
                         u_norm)

  return _layers.masked(layerwise(ratio_fn, min_trust_ratio, max_trust_ratio,
                                  layer_axes, axis_name), mask, 'mask',
                        layer_axes)


def scale_by_uncorrected_adam(
    b1: jax.typing.ArrayLike = 0.9, b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-6, eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None
) -> optax.GradientTransformation:
  r"""Adam's direction without bias correction: :math:`m/(\sqrt{v+\epsilon_r}
  +\epsilon)`.

  This is what the LAMBC authors' released PyTorch ``Lambc`` computes. The
  state is an ``optax.ScaleByAdamState``, so checkpoints are interchangeable
  with ``optax.scale_by_adam``.

  Args:
    b1: Decay of the first moment.
    b2: Decay of the second moment.
    eps: Added outside the square root.
    eps_root: Added inside the square root.
    mu_dtype: Optional dtype of the first moment.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> t = optax_lambc.scale_by_uncorrected_adam(b1=0.5, b2=0.75, eps=0.0)
    >>> g = jnp.array([2.0])
    >>> u, _ = t.update(g, t.init(g))   # m = 1, v = 1
    >>> u
    Array([1.], dtype=float32)
  """
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    return optax.ScaleByAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params, dtype=mu_dtype),
        nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu, nu)
    return out, optax.ScaleByAdamState(
        count=optax.safe_increment(state.count),
        mu=optax.tree.cast(mu, mu_dtype), nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def lambc(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9, b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-6, eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0, mask: optax.MaskOrFn = None,
    *, min_trust_ratio: BoundTree = 0.0,
    max_trust_ratio: BoundTree | _bounds.BoundPolicy | None = 1.0,
    trust_ratio_mask: optax.MaskOrFn = None, layer_axes: LayerAxes = None,
    bias_correction: bool = True,
    trust_coefficient: jax.typing.ArrayLike = 1.0,
    weight_norm_bounds: tuple[float, float | None] | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""LAMBC: LAMB whose layer-wise trust ratio is clipped into bounds.

  Per layer, with Adam direction :math:`r_t` and weight decay :math:`\lambda`:

  .. math::
    u_t = r_t + \lambda w_t,\quad
    \gamma_t = \frac{\lVert w_t\rVert}{\lVert u_t\rVert},\quad
    w_{t+1} = w_t - \eta_t\,
    \operatorname{clip}(\gamma_t, \text{min}, \text{max})\,u_t.

  It is ``optax.chain(scale_by_adam, add_decayed_weights,``
  :func:`scale_by_clipped_trust_ratio` ``, scale_by_learning_rate)``, so it
  composes with every optax wrapper and its state is a plain chain state.
  With ``max_trust_ratio=None`` it computes what ``optax.lamb`` computes, to
  float rounding (the norms are summed in another order; tested to rtol 1e-6
  in float32).

  The positional arguments are exactly ``optax.lamb``'s, in its order and
  with its meaning (``mask`` is the weight-decay mask); everything LAMBC adds
  is keyword-only, so a call written for ``optax.lamb`` means the same thing
  here, with the clip at the paper's recommended 1.0. Masks and a callable
  ``layer_axes`` are resolved once, by ``init``.

  Args:
    learning_rate: A number or an optax schedule.
    b1: Decay of Adam's first moment, in [0, 1).
    b2: Decay of Adam's second moment, in [0, 1).
    eps: Added to the denominator outside the square root.
    eps_root: Added inside the square root.
    weight_decay: Decoupled weight decay :math:`\lambda` (number or schedule),
      added before the trust ratio is taken.
    mask: Bool tree (prefix of the params) or callable; False leaves get no
      weight decay (``optax.lamb``'s ``mask``). A callable that takes a
      ``layer_axes`` keyword is given this optimizer's.
    min_trust_ratio: Lower bound: number, schedule or per-layer tree.
    max_trust_ratio: Upper bound: ``None`` (LAMB), number, schedule, per-layer
      tree, or a :class:`optax_lambc.BoundPolicy`.
    trust_ratio_mask: Bool tree or callable; False leaves are not adapted.
    layer_axes: Axes of stacked layers (scanned blocks), one trust ratio per
      slice: a tree prefix of the params or a callable, e.g.
      :func:`optax_lambc.layer_axes_from_flax`.
    bias_correction: Whether Adam's moments are bias-corrected (False: the
      authors' released ``Lambc``).
    trust_coefficient: Multiplier of the trust ratio.
    weight_norm_bounds: ``(lo, hi)`` clamp on :math:`\lVert w\rVert`, or None.
    mu_dtype: Optional dtype of Adam's first moment.
    axis_name: Mapped axis name(s) for params sharded by hand
      (``shard_map``); see :func:`scale_by_clipped_trust_ratio`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_lambc
    >>> def f(x): return jnp.sum(x ** 2)
    >>> solver = optax_lambc.lambc(learning_rate=0.1, max_trust_ratio=1.0)
    >>> params = jnp.array([1., 2., 3.])
    >>> opt_state = solver.init(params)
    >>> for _ in range(3):
    ...   grad = jax.grad(f)(params)
    ...   updates, opt_state = solver.update(grad, opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f'{f(params):.3f}')
    12.830
    11.722
    10.676

  References:
    Fong, Chen & Chen, `Improving Layer-wise Adaptive Rate Methods using Trust
    Ratio Clipping <https://arxiv.org/abs/2011.13584>`_, 2020.

    You et al., `Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes <https://arxiv.org/abs/1904.00962>`_, ICLR 2020.
  """
  for name, value in (('b1', b1), ('b2', b2), ('eps', eps),
                      ('eps_root', eps_root), ('weight_decay', weight_decay),
                      ('learning_rate', learning_rate)):
    _layers.check_number(name, value, upper=1.0 if name[0] == 'b' else None)
  direction = (optax.scale_by_adam if bias_correction else
               scale_by_uncorrected_adam)(b1, b2, eps, eps_root,
                                          mu_dtype=mu_dtype)
  return optax.chain(
      direction,
      _layers.masked(optax.add_decayed_weights(weight_decay), mask, 'mask',
                     layer_axes),
      _layers.masked(scale_by_clipped_trust_ratio(
          min_trust_ratio, max_trust_ratio,
          trust_coefficient=trust_coefficient,
          weight_norm_bounds=weight_norm_bounds, layer_axes=layer_axes,
          axis_name=axis_name), trust_ratio_mask, 'trust_ratio_mask',
                     layer_axes),
      optax.scale_by_learning_rate(learning_rate),
  )
