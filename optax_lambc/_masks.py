"""Masks that choose which layers get weight decay and trust-ratio scaling."""

import jax
import jax.numpy as jnp
import optax

from optax_lambc import _checks
from optax_lambc import _layers


def exclude_bias_and_norm(params: optax.Params,
                          layer_axes: _layers.LayerAxes = None
                          ) -> optax.Params:
  """True for weight matrices and kernels, False for biases and norm params.

  The usual convention (TF-Addons LAMB, timm, BERT): leaves whose *per-layer*
  rank is ``<= 1`` (biases, BatchNorm/LayerNorm scales and offsets, scalars)
  get neither weight decay nor layer-wise adaptation. The per-layer rank of a
  stacked leaf excludes its layer axes, so a stacked bias of shape ``(L, d)``
  is still a bias. Pass the function itself as ``mask`` and/or
  ``trust_ratio_mask``: :func:`optax_lambc.lambc` and the other builders pass
  it their own ``layer_axes``, so stacked models need nothing more.

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
  axes = iter(_layers.resolve_axes(layer_axes, params))
  flat, treedef = jax.tree.flatten(params, is_leaf=_checks.is_masked)
  return jax.tree.unflatten(treedef, [
      False if _checks.is_masked(p) else bool(jnp.ndim(p) - len(next(axes)) > 1)
      for p in flat])
