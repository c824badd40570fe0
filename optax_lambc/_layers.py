"""What a "layer" is, and the vectorised per-layer step (private).

A layer is a params leaf, or, for a *stacked* leaf (the L blocks of a scanned
transformer kept in one array), each slice along its ``layer_axes``: a tree
prefix of the params (or a callable params -> such a tree) whose leaves are
``None`` (the whole leaf is one layer), an int or a tuple of ints (negative
axes count from the end).

All layers of a transform are numbered once, in ``jax.tree.leaves`` order and
then C order over each leaf's layer axes, and every per-layer quantity (norms,
ratios, bounds, policy statistics) is one vector over that numbering. The
step therefore reads each leaf once for both squared norms (partial sums over
all but its first non-layer axis), adds the partials of every layer with one
segment sum, computes and clips every ratio in one vectorised expression, and
scales each leaf by its entries: about two kernels per leaf on accelerators
and no per-layer scalars in the state. Where each leaf's layers sit in the
vectors is kept in the state as a params-shaped tree of static
:class:`LayerSlot` nodes (no arrays, so they cost nothing in a jitted step).

Rules every layer follows:

* the ratio is 1 where the weight or the update norm is 0 (a fresh
  zero-initialised layer still moves) and NaN where the update norm is not
  finite (nothing is silently zeroed);
* norms are taken in float32 at least (float64 stays float64); the scaled
  update keeps its leaf's dtype;
* gradients through norms are finite (0) at zero norms.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lambc import _checks

# None, an int or a tuple of ints per leaf: a tree prefix of the params, or a
# callable params -> such a tree.
Axes = int | tuple[int, ...] | None
LayerAxes = Axes | Any | Callable[[optax.Params], Any]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LayerSlot:
  """Where one params leaf's layers sit in the per-layer vectors.

  Attributes:
    offset: Index of the leaf's first layer.
    shape: The sizes of its layer axes (``()`` for a leaf that is one layer).
    axes: Its layer axes, sorted and non-negative.
  """

  offset: int
  shape: tuple[int, ...]
  axes: tuple[int, ...]

  @property
  def size(self) -> int:
    return math.prod(self.shape)


def is_slot(x: Any) -> bool:
  return isinstance(x, (LayerSlot, optax.MaskedNode))


def _is_axes(x: Any) -> bool:
  return x is None or isinstance(x, int) or (
      isinstance(x, tuple) and all(isinstance(i, int) for i in x))


def normalize_axes(axes: Axes, ndim: int, where: str = '') -> tuple[int, ...]:
  """Sorted non-negative layer axes of a leaf of rank ``ndim``.

  Raises:
    ValueError: naming ``layer_axes`` and ``where`` for an axis out of range,
      a repeated axis, or a non-int.
  """
  if axes is None:
    return ()
  seq = (axes,) if isinstance(axes, (int, np.integer)) else axes
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


def resolve_axes(layer_axes: LayerAxes, params: optax.Params
                 ) -> list[tuple[int, ...]]:
  """Sorted layer axes for every (unmasked) leaf of ``params``."""
  spec = layer_axes(params) if callable(layer_axes) else layer_axes
  values = _checks.per_leaf(spec, params, 'layer_axes', is_leaf=_is_axes)
  leaves = [(k, p) for k, p in _checks.flatten_params(params)
            if not _checks.is_masked(p)]
  return [normalize_axes(a, jnp.ndim(p), _checks.path_str(k))
          for a, (k, p) in zip(values, leaves, strict=True)]


def make_slots(params: optax.Params, layer_axes: LayerAxes
               ) -> tuple[Any, int]:
  """A params-shaped tree of :class:`LayerSlot`, and the number of layers."""
  axes = iter(resolve_axes(layer_axes, params))
  flat, treedef = jax.tree.flatten(params, is_leaf=_checks.is_masked)
  slots, offset = [], 0
  for p in flat:
    if _checks.is_masked(p):
      slots.append(p)
      continue
    ax = next(axes)
    slot = LayerSlot(offset, tuple(jnp.shape(p)[a] for a in ax), ax)
    slots.append(slot)
    offset += slot.size
  return jax.tree.unflatten(treedef, slots), offset


def flat_slots(slots: Any) -> list[LayerSlot]:
  """The :class:`LayerSlot` of every unmasked leaf, in leaf order."""
  return [s for s in jax.tree.leaves(slots, is_leaf=is_slot)
          if isinstance(s, LayerSlot)]


def slot_paths(slots: Any) -> list[str]:
  """The parameter path of every unmasked leaf, in leaf order."""
  flat = jax.tree_util.tree_flatten_with_path(slots, is_leaf=is_slot)[0]
  return [_checks.path_str(p) for p, s in flat if isinstance(s, LayerSlot)]


def norm_dtype(dtype: jax.typing.DTypeLike) -> jnp.dtype:
  """Norms of bf16/fp16 leaves are taken in float32; float64 stays float64."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    dtype = jnp.finfo(dtype).dtype
  return jnp.promote_types(dtype, jnp.float32)


def vector_dtype(leaves: list[Any]) -> jnp.dtype:
  """The dtype of a transform's per-layer vectors: the widest norm dtype."""
  return functools.reduce(jnp.promote_types,
                          [norm_dtype(jnp.result_type(p)) for p in leaves],
                          jnp.dtype(jnp.float32))


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt`` whose derivative at 0 is 0 rather than inf (a norm's gradient)."""
  return jnp.sqrt(x)


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  y = jnp.sqrt(x)
  zero = y == 0
  return y, jnp.where(zero, 0, dx / (2 * jnp.where(zero, 1, y)))


def _partial_sums(x: jax.Array, axes: tuple[int, ...], dtype: jnp.dtype
                  ) -> jax.Array:
  """Squared magnitudes summed over all axes but the layer axes and one more.

  Returns ``(n_layers, m)`` partial sums: keeping the first non-layer axis
  makes each leaf one single-pass row reduction on accelerators (a full
  reduction of a large leaf is split into two kernels) and keeps a sharded
  leading axis sharded.
  """
  x = x.astype(jnp.promote_types(x.dtype, dtype))
  sq = jnp.real(x * jnp.conj(x)) if jnp.iscomplexobj(x) else x * x
  sq = sq.astype(dtype)
  other = [i for i in range(x.ndim) if i not in axes]
  s = jnp.sum(sq, axis=tuple(other[1:])) if len(other) > 1 else sq
  kept = sorted(axes + tuple(other[:1]))
  order = [kept.index(a) for a in axes] + [kept.index(a) for a in other[:1]]
  s = jnp.transpose(s, order) if order != sorted(order) else s
  n_layers = math.prod(x.shape[a] for a in axes)
  return s.reshape(n_layers, -1)


def _partials_per_layer(shape: tuple[int, ...], axes: tuple[int, ...]
                        ) -> int:
  """The columns of :func:`_partial_sums`: its first non-layer axis."""
  other = [d for i, d in enumerate(shape) if i not in axes]
  return other[0] if other else 1


def layer_norms(weights: list[jax.Array], updates: list[jax.Array],
                slots: list[LayerSlot], dtype: jnp.dtype,
                axis_name: str | tuple[str, ...] | None = None,
                ) -> tuple[jax.Array, jax.Array]:
  """``(|w|, |u|)`` of every layer, as two vectors in ``dtype``.

  The partial sums of all weights, and of all updates, are each added up per
  layer by one segment sum. (Stacking a leaf's two partials first made XLA
  read BERT's word embedding once more on H100: 10.24 HBM passes instead of
  10.04, ``benchmarks/accelerator_step.py``.) ``axis_name`` sums the squares
  across mapped axes (``shard_map``) with one collective for all layers.
  """
  n = sum(s.size for s in slots)
  if n == 0:
    return jnp.zeros([0], dtype), jnp.zeros([0], dtype)
  segments = np.concatenate([
      np.repeat(np.arange(s.offset, s.offset + s.size),
                _partials_per_layer(jnp.shape(x), s.axes))
      for x, s in zip(weights, slots, strict=True)])

  def per_layer(leaves):
    parts = [_partial_sums(x, s.axes, dtype).reshape(-1)
             for x, s in zip(leaves, slots, strict=True)]
    return jax.ops.segment_sum(jnp.concatenate(parts), segments,
                               num_segments=n, indices_are_sorted=True)

  sq = jnp.stack([per_layer(weights), per_layer(updates)])
  if axis_name is not None:
    sq = jax.lax.psum(sq, axis_name)
  norms = safe_sqrt(sq)
  return norms[0], norms[1]


def ratio(numerator: jax.Array, denominator: jax.Array,
          param_norm: jax.Array, update_norm: jax.Array) -> jax.Array:
  """``numerator / denominator``; 1 at a zero norm, NaN for non-finite ‖u‖."""
  zero = (param_norm == 0) | (update_norm == 0)
  out = jnp.where(zero, 1, numerator / jnp.where(zero, 1, denominator))
  return jnp.where(jnp.isfinite(update_norm), out, jnp.nan).astype(
      param_norm.dtype)


def clip(raw: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
  """``raw`` clipped into ``[lower, upper]``; the upper bound wins where they
  cross."""
  return jnp.minimum(jnp.maximum(raw, lower), upper)


def scale(u: jax.Array, scales: jax.Array, slot: LayerSlot) -> jax.Array:
  """``u`` times its layers' entries of ``scales`` (broadcast per slice)."""
  s = jax.lax.dynamic_slice_in_dim(scales, slot.offset, slot.size) if (
      slot.size != 1) else scales[slot.offset]
  if slot.axes:
    s = s.reshape([u.shape[i] if i in slot.axes else 1
                   for i in range(u.ndim)])
  return (u * s.astype(u.dtype)).astype(u.dtype)


def leaf_norm(x: jax.typing.ArrayLike, layer_axes: Axes = None,
              axis_name: str | tuple[str, ...] | None = None) -> jax.Array:
  """The Euclidean norm of each layer held in one leaf.

  Args:
    x: A floating-point (or complex) array.
    layer_axes: ``None`` (the whole leaf is one layer) or the axes that index
      stacked layers; the norm is taken over the other axes.
    axis_name: Name(s) of mapped axes (``shard_map``) over which the other
      axes are sharded; the squared norms are summed across them.

  Returns:
    An array of the layer axes' shape (a scalar for ``layer_axes=None``), in
    float32 for float32 and narrower inputs (float64 stays float64). Its
    gradient is 0, not NaN, at a zero norm.

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
  slot = LayerSlot(0, tuple(x.shape[a] for a in axes), axes)
  w, _ = layer_norms([x], [x], [slot], norm_dtype(x.dtype), axis_name)
  return w.reshape(slot.shape)
