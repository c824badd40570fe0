"""Masks that choose which layers get weight decay and trust-ratio scaling."""

import jax
import jax.numpy as jnp
import optax

from optax_lambc import layers


def exclude_bias_and_norm(params: optax.Params,
                          layer_axes: layers.LayerAxes = None) -> optax.Params:
  """True for weight matrices and kernels, False for biases and norm params.

  The usual convention (TF-Addons LAMB, timm, BERT): leaves whose *per-layer*
  rank is ``<= 1`` (biases, BatchNorm/LayerNorm scales and offsets, scalars)
  get neither weight decay nor layer-wise adaptation. The per-layer rank of a
  stacked leaf excludes its layer axes, so a stacked bias of shape ``(L, d)``
  is still a bias. Pass the function itself (it is evaluated on the params) as
  ``mask`` and/or ``trust_ratio_mask``; for stacked models bind the same
  ``layer_axes`` you give the optimizer with ``functools.partial``.

  Args:
    params: The parameter pytree.
    layer_axes: Axes of stacked layers, as in
      :func:`optax_lambc.scale_by_clipped_trust_ratio` (a tree prefix of the
      params or a callable, e.g. :func:`optax_lambc.layer_axes_from_flax`).

  Returns:
    A pytree of Python bools shaped like ``params``.

  Examples:
    >>> import functools
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> params = {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)}
    >>> optax_lambc.exclude_bias_and_norm(params)
    {'bias': False, 'kernel': True}
    >>> stacked = {'kernel': jnp.ones((6, 3, 4)), 'bias': jnp.zeros((6, 4))}
    >>> optax_lambc.exclude_bias_and_norm(stacked, layer_axes=0)
    {'bias': False, 'kernel': True}
    >>> mask = functools.partial(optax_lambc.exclude_bias_and_norm,
    ...                          layer_axes=0)
    >>> opt = optax_lambc.lambc(1e-3, weight_decay=1e-2, mask=mask,
    ...                         trust_ratio_mask=mask, layer_axes=0)
  """
  axes = layers.resolve_layer_axes(layer_axes, params)
  leaves, treedef = jax.tree.flatten(params)
  return jax.tree.unflatten(treedef, [
      bool(jnp.ndim(p) - len(a) > 1)
      for p, a in zip(leaves, axes, strict=True)])
