"""Layers, per-layer trees, masks and norms: what the transforms share.

A *layer* is a params leaf, or each slice of a *stacked* leaf (the blocks of
a scanned transformer kept in one array) along its ``layer_axes``. Everything
a transform needs to know about the model is decided in ``init`` and kept in
its state; the transform object holds only its hyper-parameters:

* ``layers``, a params-shaped tree: for each adapted leaf an ``int32`` array
  shaped like the leaf with every non-layer axis set to 1 (its *layer grid*),
  holding the index of each of its layers in the per-layer vectors;
  ``optax.MaskedNode`` where the leaf is not adapted. Its shapes are static
  under ``jit``, so ``update`` reads the layer axes off them, and its paths
  name the layers in the telemetry.
* the per-layer vectors (ratios and bounds), one entry per layer in
  ``jax.tree.leaves`` order, C order within a stacked leaf.
* a mask, once resolved, as :class:`FixedMaskState`'s tree of ``None``
  (applies) and ``optax.MaskedNode`` (does not): structure only.

A callable ``layer_axes`` or mask is therefore called once, by ``init``, on
what ``init`` is given (Flax variables with their metadata, say), and never
on the plain arrays ``update`` sees.

The per-layer step reads each leaf once for both squared norms, sums them
down to its layers (below), computes and clips every ratio in one vectorised
expression, and scales each leaf by its entries.

The norms' layout (:func:`layer_norms`), chosen from compiled programs
(``python -m benchmarks.accelerator_step --fsdp``, BERT-base float32;
``docs/performance.md``):

* What each device reads: every leaf once, in the pass that computes its
  update. A leaf with at most :data:`SMALL_LAYER` elements per layer is
  summed per layer there. A larger one is summed over all but its first
  non-layer axis (a row reduction: one pass on a GPU, where a full reduction
  of a large array takes two kernels), leaving *partial sums*.
* Partial sums are combined only between leaves of one shape and layer
  grid, which any shape-based sharding lays out alike, the weights' and the
  updates' together in one reduction per group; a lone unstacked leaf with
  more than :data:`SMALL_LAYER` partial sums (an embedding) sums weights and
  updates apart, so that its device-local sums are reduced before anything
  crosses chips.
* What crosses chips under FSDP: no partial sum is gathered. Each device
  sums what it holds and XLA's all-reduce combiner carries the sums in one
  or two all-reduces (``optax.lamb``: two to four); where a leaf is sharded
  along an axis its row sums run over, XLA all-reduces those row sums before
  the group's sum (371 KiB on BERT-base sharded on each leaf's largest
  axis; 1.6 KiB, the layers' sums alone, on its first). Under
  ``shard_map``, ``axis_name`` sums with one ``psum``.
* The cost on one H100: a kernel per group of same-shaped leaves, 226
  launches unrolled (199 leaves) and 42 stacked (23 leaves), where 0.3's
  single segment sum over every leaf (which gathers the partial sums of
  sharded leaves) took 221 and 39; 10.0 HBM passes either way, the LAMB
  floor. Without weight decay the update does not read the weights, and
  XLA:GPU sums a small leaf's weights in a kernel of its own unless one
  variadic reduction takes both of its norms (:func:`_sum_squares`): 301
  and 61 launches that way, 425 and 65 apart.

Rules every layer follows: the ratio is 1 where the weight or the update
norm is 0 (a fresh zero-initialised layer still moves) and NaN where the
update norm is not finite (nothing is silently zeroed); norms are taken in
float32 at least (float64 stays float64), the scaled update keeps its leaf's
dtype; gradients through norms are finite (0) at zero norms.
"""

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeAlias, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

Axes: TypeAlias = int | tuple[int, ...] | None
"""One leaf's layer axes: None (the leaf is one layer), an axis or axes."""
LayerAxesTree: TypeAlias = Union[Axes, Mapping[Any, 'LayerAxesTree']]
"""Per-leaf :data:`Axes`, as a tree prefix of the params (by key path)."""
LayerAxes: TypeAlias = Union[LayerAxesTree,
                             Callable[[optax.Params], LayerAxesTree]]
"""A :data:`LayerAxesTree`, or a callable params -> one, called by init."""
Bound: TypeAlias = Union[float, jax.typing.ArrayLike, optax.Schedule]
"""A bound for a group of layers: a number, a schedule of the step count,
or an array of a stacked leaf's layer-axes shape (one bound per slice)."""
BoundTree: TypeAlias = Union[Bound, Mapping[Any, 'BoundTree']]
"""A :data:`Bound`, or a per-layer tree of them (a tree prefix of the
params, matched by key path)."""

NO_PARAMS_MSG = (  # optax's own wording
    'You are using a transformation that requires the current value of '
    'parameters, but you are not passing `params` when calling `update`.')

# --- Paths and per-layer trees ----------------------------------------------


def _key(k: Any) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_keys(path: tuple[Any, ...]) -> tuple[str, ...]:
  """A key path as strings, without an ``nnx.Variable``'s ``.value`` step
  (so ``nnx.State`` paths equal plain-dict paths)."""
  keys = tuple(map(_key, path))
  last = path[-1] if path else None
  drop = isinstance(last, jax.tree_util.GetAttrKey) and last.name == 'value'
  return keys[:-1] if drop else keys


def path_str(keys: tuple[str, ...]) -> str:
  return '/'.join(keys) or '<root>'


def is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def flat_params(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
  """``(path keys, leaf)`` of every leaf, ``optax.MaskedNode`` included."""
  return [(path_keys(p), x) for p, x in
          jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_masked)[0]]


def per_leaf(spec: Any, params: Any, name: str,
             is_leaf: Callable[[Any], bool] | None = None) -> list[Any]:
  """The entry of a per-layer tree ``spec`` for each unmasked params leaf.

  The longest entry path that is a prefix of a leaf's path applies to it, so
  one nested dict describes a dict, a ``FrozenDict`` or an ``nnx.State``.
  Masked-out leaves (``optax.MaskedNode``, in ``optax.masked`` views) count
  as paths but need no entry; a tree with no leaves accepts any spec.

  Raises:
    ValueError: naming ``name`` and a path, for an entry that matches no
      params path (with a leaf that no entry covers, as a hint) and for a
      leaf that no entry covers.
  """
  entries = {path_keys(p): v for p, v in
             jax.tree_util.tree_flatten_with_path(spec, is_leaf=is_leaf)[0]}
  flat = flat_params(params)
  match = lambda keys: next((keys[:n] for n in range(len(keys), -1, -1)
                             if keys[:n] in entries), None)
  known = {k[:n] for k, _ in flat for n in range(len(k) + 1)}
  masked = [k for k, x in flat if is_masked(x)]
  missing = [k for k, x in flat if not is_masked(x) and match(k) is None]
  typos = [k for k in entries if flat and k not in known and
           not any(k[:len(m)] == m for m in masked)]
  if typos or missing:
    hint = (f'no entry covers {path_str(missing[0])!r}' if missing else
            f'params paths look like {[path_str(k) for k, _ in flat[:3]]}')
    raise ValueError(
        f'`{name}` entry {path_str(typos[0])!r} matches no params leaf (a '
        f'typo?); {hint}.' if typos else f'`{name}` has no entry for the '
        f'params leaf {path_str(missing[0])!r}; it must be a tree prefix of '
        'the params (matched by key path).')
  return [entries[match(k)] for k, x in flat if not is_masked(x)]


def check_number(name: str, value: Any, *, upper: float | None = None,
                 positive: bool = False) -> None:
  """Checks a hyper-parameter given as a Python or NumPy number at build time:
  real, not NaN, ``>= 0`` (``> 0`` if ``positive``), ``< upper``. JAX arrays,
  tracers and schedules follow the run-time rules instead.

  Raises:
    TypeError: for a bool, a string or a complex number, naming ``name``.
    ValueError: for a NaN or out-of-range number, naming ``name``.
  """
  is_bool = isinstance(value, (bool, np.bool_)) or str(
      getattr(value, 'dtype', '')) == 'bool'
  kind = ('string' if isinstance(value, (str, bytes)) else 'bool' if is_bool
          else 'complex number' if np.iscomplexobj(value) else '')
  if kind:
    raise TypeError(f'`{name}` must be a number, got the {kind} {value!r}.')
  if isinstance(value, (numbers.Number, np.generic)) or (
      isinstance(value, np.ndarray) and value.ndim == 0):
    x = float(value)
    if not (x > 0 if positive else x >= 0) or (upper is not None and
                                               x >= upper):
      rule = ('> 0' if positive else '>= 0') + (
          f' and < {upper}' if upper is not None else '')
      raise ValueError(f'`{name}` must be {rule} (not NaN); got {value!r}.')


# --- Layers -----------------------------------------------------------------


def _is_axes(x: Any) -> bool:
  ints = (int, np.integer)
  return x is None or isinstance(x, ints) or (
      isinstance(x, tuple) and all(isinstance(i, ints) for i in x))


def normalize_axes(axes: Any, ndim: int, where: str = '') -> tuple[int, ...]:
  """Sorted non-negative layer axes (Python or NumPy ints) of a rank-``ndim``
  leaf; ``ValueError`` naming ``where`` for anything else."""
  seq = () if axes is None else (axes,) if not isinstance(axes, tuple) \
      else axes
  at = f' at {where!r}' if where else ''
  if not _is_axes(axes) or any(isinstance(a, (bool, np.bool_)) for a in seq):
    raise ValueError(f'`layer_axes`{at} must be None, an int or a tuple of '
                     f'ints; got {axes!r}.')
  if any(not -ndim <= a < ndim for a in seq):
    raise ValueError(f'`layer_axes`{at}: axis out of range in {axes!r} for '
                     f'a leaf of rank {ndim}.')
  out = sorted(int(a) % ndim for a in seq)
  if len(set(out)) != len(out):
    raise ValueError(f'`layer_axes`{at} repeats an axis: {axes!r}.')
  return tuple(out)


def resolve_axes(layer_axes: LayerAxes, params: optax.Params
                 ) -> list[tuple[int, ...] | None]:
  """Per leaf (``optax.MaskedNode`` included: None), its sorted layer axes;
  a callable ``layer_axes`` is called on ``params`` here."""
  spec = layer_axes(params) if callable(layer_axes) else layer_axes
  values = iter(per_leaf(spec, params, 'layer_axes', _is_axes)
                if spec is not None else [])
  return [None if is_masked(x) else () if spec is None else
          normalize_axes(next(values), jnp.ndim(x), path_str(k))
          for k, x in flat_params(params)]


def layer_record(params: optax.Params, layer_axes: LayerAxes
                 ) -> tuple[Any, int, jnp.dtype]:
  """The state's ``layers`` tree (see the module docstring), the number of
  layers and the dtype of the per-layer vectors (the widest norm dtype). A
  tree with no leaves (``optax.tree.map_params``'s placeholder) gets an
  empty vector, which is no params-shaped tree.

  Raises:
    TypeError: naming the path of a leaf that is not floating-point.
  """
  flat, treedef = jax.tree.flatten(params, is_leaf=is_masked)
  grids, offset, dtype = [], 0, jnp.dtype(jnp.float32)
  axes = resolve_axes(layer_axes, params)
  for (keys, x), ax in zip(flat_params(params), axes, strict=True):
    if ax is None:
      grids.append(optax.MaskedNode())
      continue
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
      raise TypeError(
          f'params leaf {path_str(keys)!r} has dtype {jnp.result_type(x)}; '
          'optax_lambc needs floating-point (or complex) leaves: leave '
          'integer state (step counters) out of the optimized tree.')
    dtype = jnp.promote_types(dtype, norm_dtype(jnp.result_type(x)))
    shape = [d if i in ax else 1 for i, d in enumerate(jnp.shape(x))]
    grids.append(jnp.arange(offset, offset + math.prod(shape),
                            dtype=jnp.int32).reshape(shape))
    offset += math.prod(shape)
  if not flat:
    return jnp.zeros([0], jnp.int32), 0, dtype
  return jax.tree.unflatten(treedef, grids), offset, dtype


def adapted(layers: Any, treedef: Any) -> list[tuple[int, int, jax.Array]]:
  """``(leaf index, offset in the vectors, layer grid)`` of every leaf of
  ``treedef`` that the layer record adapts (offsets are static)."""
  out, offset = [], 0
  for i, g in enumerate(treedef.flatten_up_to(layers) if
                        treedef.num_leaves else []):
    if not is_masked(g):
      out.append((i, offset, g))
      offset += g.size
  return out


def norm_dtype(dtype: jax.typing.DTypeLike) -> jnp.dtype:
  """bf16/fp16 norms are taken in float32; float64 stays float64."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    dtype = jnp.finfo(dtype).dtype
  return jnp.promote_types(dtype, jnp.float32)


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt`` whose derivative at 0 is 0, not inf (a norm's gradient)."""
  return jnp.sqrt(x)


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  y = jnp.sqrt(x)
  zero = y == 0
  return y, jnp.where(zero, 0, dx / (2 * jnp.where(zero, 1, y)))


SMALL_LAYER = 4096
"""Elements per layer up to which a leaf's squares are summed in one pass."""


def _squared(x: jax.Array, dtype: jnp.dtype) -> jax.Array:
  x = x.astype(jnp.promote_types(x.dtype, dtype))
  return (jnp.real(x * jnp.conj(x)) if jnp.iscomplexobj(x) else x * x
          ).astype(dtype)


def _sum_squares(xs: list[jax.Array], axes: tuple[int, ...],
                 dtype: jnp.dtype) -> tuple[jax.Array, ...]:
  """Each of ``xs``'s squares summed over ``axes``.

  On a GPU, a whole-leaf sum takes every list in one variadic reduction: one
  kernel for a small leaf's two norms, which XLA:GPU otherwise takes in two
  when the update does not read the weights (no weight decay). Elsewhere the
  lists are summed apart: XLA:CPU runs a variadic reduction slower, and on
  TPU it adds fusions; a per-layer (stacked) variadic sum makes the SPMD
  partitioner all-gather sharded leaves (``docs/performance.md``).
  """
  sq = [_squared(x, dtype) for x in xs]
  apart = lambda *sq: tuple(jnp.sum(s, axis=axes) for s in sq)
  if len(sq) < 2 or len(axes) < jnp.ndim(sq[0]):
    return apart(*sq)
  together = lambda *sq: _sums_in_one(sq, axes)
  return jax.lax.platform_dependent(*sq, cuda=together, rocm=together,
                                    default=apart)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _sums_in_one(sq: tuple[jax.Array, ...], axes: tuple[int, ...]
                 ) -> tuple[jax.Array, ...]:
  """Each of ``sq`` summed over ``axes`` by one variadic reduction, whose
  derivative sums apart (JAX cannot differentiate a variadic reduction)."""
  zeros = tuple(jnp.zeros([], s.dtype) for s in sq)
  return jax.lax.reduce(sq, zeros, lambda a, b: tuple(map(jnp.add, a, b)),
                        axes)


@_sums_in_one.defjvp
def _sums_in_one_jvp(axes, primals, tangents):
  (sq,), (dsq,) = primals, tangents
  return _sums_in_one(sq, axes), tuple(jnp.sum(d, axis=axes) for d in dsq)


def _partials(x: jax.Array, grid_shape: tuple[int, ...], dtype: jnp.dtype
              ) -> jax.Array:
  """``(layers, m)``: squares summed over every non-layer axis but the first
  (of size ``m``), layer axes first: one row reduction per leaf."""
  layer = [i for i, d in enumerate(grid_shape) if d != 1]
  other = [i for i, d in enumerate(grid_shape) if d == 1]
  s = jnp.sum(_squared(x, dtype), axis=tuple(other[1:]))
  kept = sorted(layer + other[:1])
  s = jnp.transpose(s, [kept.index(a) for a in layer + other[:1]])
  return s.reshape(math.prod(grid_shape), -1)


def layer_norms(leaves: list[list[jax.Array]], grids: list[jax.Array],
                dtype: jnp.dtype, axis_name: str | tuple[str, ...] | None
                ) -> jax.Array:
  """``(len(leaves), layers)``: every layer's norm of each list of leaves.

  The layout, and the compiled figures behind it, are in the module
  docstring. ``axis_name`` sums across mapped axes (``shard_map``) with one
  ``psum``.
  """
  groups: dict[Any, list[int]] = {}
  for i, (x, g) in enumerate(zip(leaves[0], grids, strict=True)):
    big = g.size and jnp.size(x) // g.size > SMALL_LAYER
    groups.setdefault((jnp.shape(x), g.shape) if big else None, []).append(i)
  sums: list[list[Any]] = [[None] * len(grids) for _ in leaves]
  for key, members in groups.items():
    if key is None:  # small leaves: one reduction each, for every list
      for i in members:
        axes = tuple(a for a, d in enumerate(grids[i].shape) if d == 1)
        for row, s in zip(sums, _sum_squares([xs[i] for xs in leaves], axes,
                                             dtype), strict=True):
          row[i] = s.reshape(-1)
      continue
    # One reduction for the group's partial sums of every list, but a lone
    # unstacked leaf with many partial sums sums each list apart (see above).
    cells = [(j, i) for j in range(len(leaves)) for i in members]
    first = leaves[0][members[0]]
    lone = (len(members) == 1 and grids[members[0]].size == 1
            and jnp.shape(first)[0] > SMALL_LAYER)
    for block in ([[c] for c in cells] if lone else [cells]):
      total = jnp.concatenate([_partials(leaves[j][i], grids[i].shape, dtype)
                               for j, i in block]).sum(axis=1)
      start = 0
      for j, i in block:
        sums[j][i] = total[start:start + grids[i].size]
        start += grids[i].size
  rows = [jnp.concatenate(row) if row else jnp.zeros([0], dtype)
          for row in sums]
  sq = jnp.stack(rows)
  return safe_sqrt(sq if axis_name is None else jax.lax.psum(sq, axis_name))


def ratio(numerator: jax.Array, denominator: jax.Array,
          param_norm: jax.Array, update_norm: jax.Array) -> jax.Array:
  """``numerator / denominator``; 1 at a zero norm, NaN where ``‖u‖`` is not
  finite."""
  zero = (param_norm == 0) | (update_norm == 0)
  out = jnp.where(zero, 1, numerator / jnp.where(zero, 1, denominator))
  return jnp.where(jnp.isfinite(update_norm), out, jnp.nan).astype(
      param_norm.dtype)


def scale(u: jax.Array, scales: jax.Array, offset: int, grid: jax.Array
          ) -> jax.Array:
  """``u`` times its layers' entries of ``scales``, broadcast per slice."""
  s = jax.lax.slice_in_dim(scales, offset, offset + grid.size)
  return (u * s.reshape(grid.shape).astype(u.dtype)).astype(u.dtype)


# --- Masks --------------------------------------------------------------------


class FixedMaskState(NamedTuple):
  """State of a transform applied to the leaves a mask chose at ``init``."""

  mask: optax.Params
  """Params-shaped: ``None`` where the inner transform applies,
  ``optax.MaskedNode`` where it does not (structure only, no arrays)."""
  inner_state: optax.OptState


def mask_flags(mask: optax.MaskOrFn, params: optax.Params, name: str,
               layer_axes: LayerAxes = None) -> list[bool]:
  """Per leaf (``optax.MaskedNode`` included: False), whether ``mask``
  selects it. A callable that takes ``layer_axes`` (such as
  :func:`exclude_bias_and_norm`) is given them resolved on ``params``."""
  if callable(mask):
    try:
      takes = 'layer_axes' in inspect.signature(mask).parameters
    except (TypeError, ValueError):
      takes = False
    if takes and layer_axes is not None:
      axes = resolve_axes(layer_axes, params)
      mask = mask(params, layer_axes=jax.tree.unflatten(
          jax.tree.structure(params, is_leaf=is_masked),
          [optax.MaskedNode() if a is None else a for a in axes]))
    else:
      mask = mask(params)
  values = iter(per_leaf(mask, params, name))
  out = [False if is_masked(x) else next(values) for _, x in
         flat_params(params)]
  for (keys, _), m in zip(flat_params(params), out, strict=True):
    if not isinstance(m, (bool, np.bool_)):
      raise TypeError(f'`{name}` at {path_str(keys)!r} must be a Python '
                      f'bool, got {m!r}.')
  return [bool(m) for m in out]


def masked(inner: optax.GradientTransformation, mask: optax.MaskOrFn,
           name: str, layer_axes: LayerAxes = None
           ) -> optax.GradientTransformationExtraArgs:
  """``inner`` on the leaves ``mask`` selects, the others passed through.

  As ``optax.masked`` (``inner`` sees views with ``optax.MaskedNode`` in
  place of the other leaves), except that the mask is resolved once, by
  ``init``, and kept in the state (:class:`FixedMaskState`): a callable mask
  is never re-run on what ``update`` is given.
  """
  inner = optax.with_extra_args_support(inner)
  if mask is None:
    return inner

  def view(tree, treedef, keep):
    return jax.tree.unflatten(treedef, [
        x if k else optax.MaskedNode()
        for x, k in zip(treedef.flatten_up_to(tree), keep, strict=True)])

  def init_fn(params):
    keep = mask_flags(mask, params, name, layer_axes)
    treedef = jax.tree.structure(params, is_leaf=is_masked)
    record = jax.tree.unflatten(treedef, [None if k else optax.MaskedNode()
                                          for k in keep])
    return FixedMaskState(  # no leaves: no params-shaped record (see layers)
        record if keep else jnp.zeros([0], bool),
        inner.init(view(params, treedef, keep)))

  def update_fn(updates, state, params=None, **extra_args):
    treedef = jax.tree.structure(updates, is_leaf=is_masked)
    keep = [m is None for m in treedef.flatten_up_to(state.mask)] if (
        treedef.num_leaves) else []
    new, inner_state = inner.update(
        view(updates, treedef, keep), state.inner_state,
        None if params is None else view(params, treedef, keep), **extra_args)
    out = [n if k else u for n, u, k in zip(
        treedef.flatten_up_to(new), treedef.flatten_up_to(updates), keep,
        strict=True)]
    return (jax.tree.unflatten(treedef, out),
            state._replace(inner_state=inner_state))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def exclude_bias_and_norm(params: optax.Params,
                          layer_axes: LayerAxes = None) -> optax.Params:
  """True for weight matrices and kernels, False for biases and norm params.

  The usual convention (TF-Addons LAMB, timm, BERT): leaves whose *per-layer*
  rank is ``<= 1`` (biases, BatchNorm/LayerNorm scales and offsets, scalars)
  get neither weight decay nor layer-wise adaptation. The per-layer rank of a
  stacked leaf excludes its layer axes, so a stacked bias of shape ``(L, d)``
  is still a bias. Pass the function itself as ``mask`` and/or
  ``trust_ratio_mask``: the optimizers call it once, at ``init``, with their
  own ``layer_axes`` resolved, so stacked models need nothing more.

  Args:
    params: The parameter pytree (masked-out leaves, ``optax.MaskedNode``, get
      False).
    layer_axes: Axes of stacked layers, as in
      :func:`optax_lambc.scale_by_clipped_trust_ratio`.

  Returns:
    A pytree of Python bools shaped like ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> params = {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)}
    >>> optax_lambc.exclude_bias_and_norm(params)
    {'bias': False, 'kernel': True}
    >>> stacked = {'kernel': jnp.ones((6, 3, 4)), 'bias': jnp.zeros((6, 4))}
    >>> optax_lambc.exclude_bias_and_norm(stacked, layer_axes=0)
    {'bias': False, 'kernel': True}

    The optimizer passes its ``layer_axes`` to the mask:

    >>> opt = optax_lambc.lambc(
    ...     1e-3, weight_decay=1e-2, layer_axes=0,
    ...     mask=optax_lambc.exclude_bias_and_norm,
    ...     trust_ratio_mask=optax_lambc.exclude_bias_and_norm)
    >>> state = opt.init(stacked)
    >>> optax_lambc.trust_ratio_stats(state).names.paths
    ('kernel',)
  """
  flat, treedef = jax.tree.flatten(params, is_leaf=is_masked)
  return jax.tree.unflatten(treedef, [
      a is not None and jnp.ndim(x) - len(a) > 1
      for x, a in zip(flat, resolve_axes(layer_axes, params), strict=True)])


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
  shape = [d if i in axes else 1 for i, d in enumerate(x.shape)]
  norms = layer_norms([[x]], [jnp.zeros(shape, jnp.int8)],
                      norm_dtype(x.dtype), axis_name)
  return norms[0].reshape([x.shape[a] for a in axes])
