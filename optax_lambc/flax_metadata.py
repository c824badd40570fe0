"""Reads the stacked-layer axes of Flax params from Flax's own metadata.

Flax records which axis of a stacked parameter indexes layers when the stack is
built with partition metadata: NNX modules created under ``nnx.vmap`` /
``nnx.scan`` with ``transform_metadata={nnx.PARTITION_NAME: 'layers'}``, and
linen's ``nn.scan(..., metadata_params={nn.PARTITION_NAME: 'layers'})`` over
``nn.with_partitioning`` boxes. Flax is imported only when the helper is
called, so it stays an optional dependency of the library.
"""

import os
from typing import Any

import jax

from optax_lambc import _validation


def _names(leaf: Any) -> tuple[Any, ...] | None:
  """The per-axis partition names a Flax box carries, or None."""
  names = getattr(leaf, 'names', None)  # linen nn.Partitioned
  if names is not None:
    return tuple(names)
  get = getattr(leaf, 'get_metadata', None)  # nnx.Variable
  if get is not None:
    meta = get()
    names = meta.get('out_sharding', meta.get('sharding_names'))
    return None if names is None else tuple(names)
  return None


def layer_axes_from_flax(variables: Any, axis_name: str = 'layers') -> dict:
  """The ``layer_axes`` tree of a Flax model, read from its metadata.

  Args:
    variables: An ``nnx.Module``, an ``nnx.State`` (e.g. ``nnx.state(model,
      nnx.Param)``), or linen variables/params that still hold their
      ``nn.Partitioned`` boxes (before ``nn.unbox``/``meta.unbox``).
    axis_name: The partition name of the layer axis.

  Returns:
    A nested dict with the params' paths, whose leaves are ``None`` (one layer)
    or a tuple of the axes named ``axis_name``. It matches the pure params
    (``nnx.to_pure_dict``, unboxed linen params) and, because per-layer trees
    are matched by key path, an ``nnx.State`` too. Pass it as ``layer_axes``
    to :func:`optax_lambc.lambc`, :func:`optax_lambc.larc`,
    :func:`optax_lambc.scale_by_clipped_trust_ratio` or
    :func:`optax_lambc.exclude_bias_and_norm`.

  Raises:
    ValueError: if no parameter carries ``axis_name`` (a model without the
      annotation would otherwise silently get one ratio per stacked leaf), or
      if a parameter with no partition names at all sits in the same module
      subtree as a stacked one (e.g. an unannotated LayerNorm scale inside a
      scanned block): annotate it, or pass ``layer_axes`` by hand.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import optax_lambc
    >>> @nnx.vmap(in_axes=0, out_axes=0,
    ...           transform_metadata={nnx.PARTITION_NAME: 'layers'})
    ... def make_blocks(key):
    ...   return nnx.Linear(4, 4, rngs=nnx.Rngs(key), kernel_metadata={
    ...       'out_sharding': (None, None)}, bias_metadata={
    ...       'out_sharding': (None,)})
    >>> import jax
    >>> with nnx.use_eager_sharding(False):
    ...   blocks = make_blocks(jax.random.split(jax.random.key(0), 3))
    >>> optax_lambc.layer_axes_from_flax(blocks)
    {'bias': (0,), 'kernel': (0,)}
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from flax.linen import meta  # pylint: disable=g-import-not-at-top

  if isinstance(variables, nnx.Module):
    variables = nnx.state(variables, nnx.Param)
  is_box = lambda x: isinstance(x, (nnx.Variable, meta.AxisMetadata))
  flat = jax.tree_util.tree_flatten_with_path(variables, is_leaf=is_box)[0]
  entries = []  # (keys, names or None, axes or None)
  for path, leaf in flat:
    keys = tuple(_validation.key_str(k) for k in path)
    if keys and keys[-1] == 'value' and not is_box(leaf):
      keys = keys[:-1]  # a Variable flattened to its value
    names = _names(leaf)
    axes = None if names is None else tuple(
        i for i, n in enumerate(names) if n == axis_name) or None
    entries.append((keys, names, axes))
  stacked = [k for k, _, a in entries if a is not None]
  if not stacked:
    raise ValueError(
        f'No parameter carries the partition name {axis_name!r}: build the '
        f'stack with transform_metadata={{nnx.PARTITION_NAME: {axis_name!r}}}'
        ' (nnx.vmap/nnx.scan) or metadata_params (linen nn.scan) on '
        'parameters created with partition names, or pass `layer_axes` by '
        'hand. Without it every stacked leaf would get one trust ratio.')
  common = len(os.path.commonprefix([k for k, _, _ in entries]))
  stacked_modules = {k[:n] for k in stacked for n in range(common + 1, len(k))}
  for keys, names, _ in entries:
    if names is None and any(keys[:n] in stacked_modules
                             for n in range(common + 1, len(keys))):
      raise ValueError(
          f'Parameter {"/".join(keys)!r} has no partition names but lives in '
          f'a module with stacked parameters; give it names (e.g. '
          "scale_metadata={'out_sharding': (None,)}) so its layer axis is "
          'recorded, or pass `layer_axes` by hand.')
  out: dict = {}
  for keys, _, axes in entries:
    node = out
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = axes
  return out
