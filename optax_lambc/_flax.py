"""Reads the stacked-layer axes of Flax params from Flax's own metadata.

Flax records which axis of a stacked parameter indexes layers when the stack is
built with partition metadata: NNX modules created under ``nnx.vmap`` /
``nnx.scan`` with ``transform_metadata={nnx.PARTITION_NAME: 'layers'}``, and
linen's ``nn.scan(..., metadata_params={nn.PARTITION_NAME: 'layers'})`` over
``nn.with_partitioning`` boxes. Flax is imported only when the helper is
called, so it stays an optional dependency.
"""

import functools
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from optax_lambc import _layers


def _names_and_shape(leaf: Any) -> tuple[tuple[Any, ...] | None,
                                          tuple[int, ...]]:
  """The per-axis partition names a Flax box carries (or None), its shape."""
  meta = leaf.get_metadata() if hasattr(leaf, 'get_metadata') else {}
  names = getattr(leaf, 'names', meta.get('out_sharding',  # linen, nnx
                                          meta.get('sharding_names')))
  value = leaf.get_value() if hasattr(leaf, 'get_value') else getattr(
      leaf, 'value', leaf)
  return None if names is None else tuple(names), tuple(np.shape(value))


def layer_axes_from_flax(variables: Any, axis_name: str = 'layers'
                         ) -> dict[str, Any]:
  """The ``layer_axes`` tree of a Flax model, read from its metadata.

  Args:
    variables: What holds the annotated params: an ``nnx.Module``, an
      ``nnx.State`` (e.g. ``nnx.state(model, nnx.Param)``), linen params, or
      linen variables (``{'params': ..., 'batch_stats': ...}``) that still hold
      their ``nn.Partitioned`` boxes (before ``nn.unbox``).
    axis_name: The partition name of the layer axis.

  Returns:
    A nested dict keyed like the params that an optimizer sees, whose leaves
    are ``None`` (one layer) or the tuple of axes named ``axis_name``: for an
    NNX module or state, the paths of ``nnx.state(model, nnx.Param)``; for
    linen variables, the paths *inside* ``variables['params']`` (other
    collections are ignored). Per-layer trees are matched by key path, so it
    fits a plain dict, a ``FrozenDict`` and an ``nnx.State`` alike. Pass it as
    ``layer_axes`` to :func:`optax_lambc.lambc` and the other builders.

  Raises:
    ValueError: if no parameter carries ``axis_name`` (a model without the
      annotation would silently get one ratio per stacked leaf), or if a
      parameter without partition names lies inside a stack, e.g. an
      unannotated LayerNorm in a scanned block: annotate it, or pass
      ``layer_axes`` by hand. A stack is the deepest module holding every
      parameter stacked with one layer count and axes, widened while every
      parameter beside it has that layer count at those axes and one more
      axis at least; so any number of stacks work (an encoder and a decoder,
      two towers), and parameters beside a stack (an embedding, a head) need
      no names.

  Examples:
    >>> import jax
    >>> from flax import nnx
    >>> import optax_lambc
    >>> @nnx.vmap(in_axes=0, out_axes=0,
    ...           transform_metadata={nnx.PARTITION_NAME: 'layers'})
    ... def make_blocks(key):
    ...   return nnx.Linear(4, 4, rngs=nnx.Rngs(key), kernel_metadata={
    ...       'out_sharding': (None, None)}, bias_metadata={
    ...       'out_sharding': (None,)})
    >>> with nnx.use_eager_sharding(False):
    ...   blocks = make_blocks(jax.random.split(jax.random.key(0), 3))
    >>> optax_lambc.layer_axes_from_flax(blocks)
    {'bias': (0,), 'kernel': (0,)}
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from flax.linen import meta  # pylint: disable=g-import-not-at-top

  if isinstance(variables, nnx.Module):
    variables = nnx.state(variables, nnx.Param)
  elif (isinstance(variables, Mapping) and 'params' in variables and all(
      isinstance(v, Mapping) for v in variables.values())):
    variables = variables['params']  # linen variables: the params collection
  is_box = lambda x: isinstance(x, (nnx.Variable, meta.AxisMetadata))
  entries = []  # (keys, names or None, layer axes or None, shape)
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      variables, is_leaf=is_box)[0]:
    names, shape = _names_and_shape(leaf)
    axes = tuple(i for i, n in enumerate(names or ()) if n == axis_name)
    entries.append((_layers.path_keys(path), names, axes or None, shape))
  if all(axes is None for _, _, axes, _ in entries):
    raise ValueError(
        f'No parameter carries the partition name {axis_name!r}: build the '
        f'stack with transform_metadata={{nnx.PARTITION_NAME: {axis_name!r}}}'
        ' (nnx.vmap/nnx.scan) or metadata_params (linen nn.scan) on '
        'parameters created with partition names, or pass `layer_axes` by '
        'hand. Without it every stacked leaf would get one trust ratio.')
  under = lambda prefix: [e for e in entries if e[0][:len(prefix)] == prefix]
  for keys, _, axes, shape in entries:
    if axes is None:
      continue
    # The stack's module: this parameter's, widened while every parameter
    # beside it is stacked the same way or looks so (unannotated).
    count = tuple(shape[a] for a in axes)
    fits = lambda n, a, s, axes=axes, count=count: (
        a == axes if n is not None else len(s) > max(*axes, len(axes))
    ) and tuple(s[i] for i in axes) == count
    root = keys[:-1]
    while root and all(fits(*e[1:]) for e in under(root[:-1])):
      root = root[:-1]
    for bad, names, _, _ in under(root):
      if names is None:
        raise ValueError(
            f'Parameter {"/".join(bad)!r} has no partition names but sits in '
            f'the stack at {"/".join(root) or "<root>"!r} (layer count '
            f'{count} at axes {axes}); give it names (e.g. scale_metadata='
            "{'out_sharding': (None,)}) so its layer axis is recorded, or "
            'pass `layer_axes` by hand.')
  out: dict[str, Any] = {}
  for keys, _, axes, _ in entries:
    functools.reduce(lambda node, k: node.setdefault(k, {}), keys[:-1],
                     out)[keys[-1]] = axes
  return out
