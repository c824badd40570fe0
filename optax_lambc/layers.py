"""What a "layer" is, and the per-layer loop that LAMBC and LARC share.

A layer is a whole params leaf, or, for a *stacked* leaf (the L blocks of a
scanned transformer kept in one array with a leading layer axis), each slice
along its ``layer_axes``. ``layer_axes`` is a tree prefix of the params (or a
callable params -> such a tree, e.g. :func:`optax_lambc.layer_axes_from_flax`)
whose leaves are ``None`` (the whole leaf is one layer), an int or a tuple of
ints (negative axes count from the end, as in NumPy). Norms are taken over the
remaining axes, so a leaf of shape ``(L, d, e)`` with ``layer_axes=0`` has L
trust ratios, and every per-layer quantity (ratios, bounds, policy statistics,
telemetry) has the shape of the layer axes: ``(L,)`` here, ``()`` for a leaf
that is one layer.

The rules every layer follows, in one place:

* the ratio is ``numerator / denominator``, 1 where the weight or the update
  norm is 0 (a fresh zero-initialised layer still moves), NaN where the update
  norm is not finite (nothing is silently zeroed);
* norms of bf16/fp16 leaves are taken in float32 (float64 stays float64); the
  scaled update keeps the leaf's dtype;
* gradients through norms and ratios are finite at zero norms, so the
  optimizers can be differentiated (meta-learning, hyper-gradients).
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lambc import _validation

# A per-layer tree: one array of the layer axes' shape per (adapted) leaf.
RatioTree = Any
# None, an int or a tuple of ints, per leaf; or a callable params -> that.
LayerAxes = Any


class ScaleByClippedTrustRatioState(NamedTuple):
  """State of the layer-wise transforms (LAMBC's clipped ratio and LARC's).

  Every field but ``count`` and ``policy_state`` is a per-layer tree: one array
  per adapted leaf with the shape of its layer axes (a scalar for a leaf that
  is one layer). Ratios are those of the last update (1 before the first);
  bounds are those in force at the last update, or, before the first, the
  configured ones at step 0.
  """

  count: jax.Array  # int32 scalar: number of updates so far.
  raw_ratio: RatioTree  # the unclipped ratio (NaN after a non-finite update).
  applied_ratio: RatioTree  # raw ratio clipped into [lower, upper].
  lower: RatioTree  # lower bound in force (>= 0).
  upper: RatioTree  # upper bound in force (inf: none).
  policy_state: optax.OptState  # a BoundPolicy's state, or EmptyState().


def norm_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """Norms of bf16/fp16 leaves are taken in float32; float64 stays float64."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    dtype = jnp.finfo(dtype).dtype
  return jnp.promote_types(dtype, jnp.float32)


def _is_axes(x: Any) -> bool:
  return x is None or isinstance(x, int) or (
      isinstance(x, tuple) and all(isinstance(i, int) for i in x))


def normalize_axes(axes: int | tuple[int, ...] | None, ndim: int,
                   where: str = '') -> tuple[int, ...]:
  """Sorted non-negative layer axes of a leaf of rank ``ndim``.

  Raises:
    ValueError: naming ``layer_axes`` and ``where`` (a pytree path) for an
      axis out of range, a repeated axis, or a non-int.
  """
  if axes is None:
    return ()
  seq = (axes,) if isinstance(axes, int) else axes
  at = f' at {where!r}' if where else ''
  if not isinstance(seq, tuple) or any(
      isinstance(a, bool) or not isinstance(a, (int, np.integer))
      for a in seq):
    raise ValueError(f'`layer_axes`{at} must be None, an int or a tuple of '
                     f'ints; got {axes!r}.')
  out = []
  for a in seq:
    if not -ndim <= a < ndim:
      raise ValueError(f'`layer_axes`{at}: axis {a} is out of range for a '
                       f'leaf of rank {ndim}.')
    out.append(int(a) % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f'`layer_axes`{at} repeats an axis: {axes!r}.')
  return tuple(sorted(out))


def resolve_layer_axes(layer_axes: LayerAxes, params: optax.Params, *,
                       strict: bool = True) -> list[tuple[int, ...]]:
  """One tuple of sorted layer axes per params leaf (``()``: whole leaf)."""
  tree = layer_axes(params) if callable(layer_axes) else layer_axes
  values = _validation.per_leaf(tree, params, 'layer_axes', is_leaf=_is_axes,
                                strict=strict)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return [normalize_axes(a, jnp.ndim(p), _validation.path_str(path))
          for a, (path, p) in zip(values, flat, strict=True)]


def slice_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[
    int, ...]:
  """The shape of a leaf's per-layer quantities: its layer axes' sizes."""
  return tuple(shape[a] for a in axes)


def _sum_sq(x: jax.Array, reduce: tuple[int, ...] | None,
            axis_name: str | tuple[str, ...] | None) -> jax.Array:
  sq = jnp.sum(jnp.real(x * jnp.conj(x)), axis=reduce)
  return sq if axis_name is None else jax.lax.psum(sq, axis_name)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _norm(x: jax.Array, reduce: tuple[int, ...] | None,
          axis_name: str | tuple[str, ...] | None) -> jax.Array:
  if reduce is None and axis_name is None:
    # jnp.linalg.norm reduces exactly as optax.lamb does (bit-identical).
    return jnp.linalg.norm(x)
  return jnp.sqrt(_sum_sq(x, reduce, axis_name))


@_norm.defjvp
def _norm_jvp(reduce, axis_name, primals, tangents):
  # d|x| = <x, dx> / |x|, and 0 (not NaN) at |x| = 0.
  (x,), (dx,) = primals, tangents
  n = _norm(x, reduce, axis_name)
  dot = jnp.sum(jnp.real(jnp.conj(x) * dx), axis=reduce)
  if axis_name is not None:
    dot = jax.lax.psum(dot, axis_name)
  zero = n == 0
  return n, jnp.where(zero, 0, dot / jnp.where(zero, 1, n))


def leaf_norm(x: jax.typing.ArrayLike,
              layer_axes: int | tuple[int, ...] | None = None,
              axis_name: str | tuple[str, ...] | None = None) -> jax.Array:
  """The Euclidean norm of each layer held in one leaf.

  Args:
    x: A floating-point (or complex) array.
    layer_axes: ``None`` (the whole leaf is one layer) or the axes that index
      stacked layers; the norm is taken over the other axes.
    axis_name: Name(s) of mapped axes (``shard_map``/``pmap``) over which the
      non-layer axes are sharded; the squared norms are summed across them.

  Returns:
    An array of the layer axes' shape (a scalar for ``layer_axes=None``) in
    :func:`norm_dtype` of ``x``. Its gradient is finite (0) at a zero norm.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> optax_lambc.leaf_norm(jnp.array([[3.0], [4.0]]))
    Array(5., dtype=float32)
    >>> optax_lambc.leaf_norm(jnp.array([[3.0, 4.0], [0.0, 1.0]]), 0)
    Array([5., 1.], dtype=float32)
    >>> optax_lambc.leaf_norm(jnp.ones(4, jnp.bfloat16)).dtype
    dtype('float32')
  """
  x = jnp.asarray(x)
  axes = normalize_axes(layer_axes, x.ndim)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  reduce = None if not axes else tuple(
      i for i in range(x.ndim) if i not in axes)
  return _norm(x, reduce, axis_name)


def trust_ratio(numerator: jax.Array, denominator: jax.Array,
                param_norm: jax.Array, update_norm: jax.Array) -> jax.Array:
  """``numerator / denominator`` under the zero-norm and NaN rules above."""
  zero = (param_norm == 0) | (update_norm == 0)
  ratio = numerator / jnp.where(zero, 1, denominator)
  ratio = jnp.where(zero, 1, ratio)
  return jnp.where(jnp.isfinite(update_norm), ratio, jnp.nan).astype(
      param_norm.dtype)


def scale_slices(u: jax.Array, ratio: jax.Array,
                 axes: tuple[int, ...]) -> jax.Array:
  """``u`` times each layer's ratio (broadcast over the other axes)."""
  if axes:
    ratio = ratio.reshape([u.shape[i] if i in axes else 1
                           for i in range(u.ndim)])
  return (u * ratio).astype(u.dtype)


def ratio_template(params: optax.Params,
                   axes: list[tuple[int, ...]]) -> RatioTree:
  """Zeros of each leaf's per-layer shape, in its norm dtype."""
  leaves, treedef = jax.tree.flatten(params)
  return jax.tree.unflatten(treedef, [
      jnp.zeros(slice_shape(jnp.shape(p), a), norm_dtype(jnp.result_type(p)))
      for p, a in zip(leaves, axes, strict=True)])


# (update leaf, param leaf, layer axes, leaf index) -> (raw ratio, direction):
# the direction is what the applied ratio multiplies.
RawRatioFn = Callable[[jax.Array, jax.Array, tuple[int, ...], int],
                      tuple[jax.Array, jax.Array]]


def scale_layers(raw_fn: RawRatioFn, updates: optax.Updates,
                 params: optax.Params, axes: list[tuple[int, ...]],
                 lower: RatioTree, upper: RatioTree,
                 ) -> tuple[optax.Updates, RatioTree, RatioTree]:
  """The per-layer loop: raw ratio, clip into ``[lower, upper]``, scale.

  If ``lower > upper`` the upper bound wins; a NaN raw ratio stays NaN.

  Returns:
    ``(scaled updates, raw ratios, applied ratios)``.
  """
  flat_u, treedef = jax.tree.flatten(updates)
  flat_p = treedef.flatten_up_to(params)
  lo_l, hi_l = treedef.flatten_up_to(lower), treedef.flatten_up_to(upper)
  out, raw_l, app_l = [], [], []
  for i, (u, p, ax) in enumerate(zip(flat_u, flat_p, axes, strict=True)):
    raw, direction = raw_fn(u, p, ax, i)
    applied = jnp.minimum(jnp.maximum(raw, lo_l[i]), hi_l[i])
    raw_l.append(raw)
    app_l.append(applied)
    out.append(scale_slices(direction, applied, ax))
  unflatten = lambda xs: jax.tree.unflatten(treedef, xs)
  return unflatten(out), unflatten(raw_l), unflatten(app_l)


def initial_state(template: RatioTree, lower: RatioTree, upper: RatioTree,
                  policy_state: optax.OptState | None = None,
                  ) -> ScaleByClippedTrustRatioState:
  """The state before the first update: ratios 1, the configured bounds.

  Every field gets its own buffers, so the state can be donated to a jitted
  step (a buffer shared by two leaves cannot be donated twice).
  """
  ones = lambda: jax.tree.map(jnp.ones_like, template)
  return ScaleByClippedTrustRatioState(
      count=jnp.zeros([], jnp.int32), raw_ratio=ones(), applied_ratio=ones(),
      lower=lower, upper=upper,
      policy_state=optax.EmptyState() if policy_state is None else
      policy_state)


def masked_with_checks(inner: optax.GradientTransformation,
                       mask: optax.MaskOrFn, mask_name: str,
                       layer_axes: LayerAxes,
                       per_layer_trees: dict[str, Any],
                       ) -> optax.GradientTransformation:
  """``optax.masked(inner, mask)`` whose ``init`` first checks every tree.

  Inside ``optax.masked`` a transform sees a masked view of the params, where
  an entry of ``layer_axes`` or of a per-layer tree may legitimately name a
  masked-out leaf; so ``inner`` resolves them leniently, and this ``init``
  checks them strictly (typos, coverage) against the full params. Without a
  mask, ``inner`` is returned as it is.
  """
  if mask is None:
    return inner
  masked = optax.masked(inner, _validation.checked_mask(mask, mask_name))

  def init_fn(params):
    _validation.check_float_leaves(params, 'params')
    resolve_layer_axes(layer_axes, params)
    for name, spec in per_layer_trees.items():
      if _validation.is_tree_spec(spec):
        _validation.per_leaf(spec, params, name)
    return masked.init(params)

  return optax.GradientTransformation(init_fn, masked.update)
