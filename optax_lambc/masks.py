"""Masks that choose which layers get weight decay and trust-ratio scaling."""

from typing import Any

import jax
import jax.numpy as jnp


def exclude_bias_and_norm(params: Any) -> Any:
  """True for weight matrices and kernels, False for biases and norm params.

  The usual convention (TF-Addons LAMB, timm, BERT): leaves with ``ndim <= 1``
  (biases, BatchNorm/LayerNorm scales and offsets, scalars) get neither weight
  decay nor layer-wise adaptation. Pass the function itself (it is evaluated on
  the params) as ``weight_decay_mask`` and/or ``trust_ratio_mask``.

  Args:
    params: The parameter pytree.

  Returns:
    A pytree of Python bools shaped like ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> params = {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)}
    >>> optax_lambc.exclude_bias_and_norm(params)
    {'bias': False, 'kernel': True}
    >>> mask = optax_lambc.exclude_bias_and_norm
    >>> opt = optax_lambc.lambc(1e-3, weight_decay=1e-2,
    ...                         weight_decay_mask=mask, trust_ratio_mask=mask)
  """
  return jax.tree.map(lambda p: bool(jnp.ndim(p) > 1), params)
