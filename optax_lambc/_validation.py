"""Argument and input checks shared by the transforms (private).

Hyper-parameters that are concrete numbers are checked when an optimizer is
built; traced values (inside ``jit`` or ``optax.inject_hyperparams``) cannot be
inspected and are passed through. Pytree checks run at trace time, so they cost
nothing per step.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# optax's own wording for a transform called without params.
NO_PARAMS_MSG = (
    'You are using a transformation that requires the current value of '
    'parameters, but you are not passing `params` when calling `update`.')


def concrete_float(value: Any) -> float | None:
  """Returns ``value`` as a Python float if it is a concrete scalar number."""
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float, np.number)):
    return float(value)
  if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(
      value, jax.core.Tracer
  ):
    if np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype,
                                             np.number):
      return float(np.asarray(value))
  return None


def check_number(name: str, value: Any, *, lower: float = 0.0,
                 upper: float | None = None,
                 upper_inclusive: bool = False) -> None:
  """Raises ``ValueError`` if a concrete ``value`` is NaN or out of range."""
  x = concrete_float(value)
  if x is None:
    return
  if math.isnan(x):
    raise ValueError(f'`{name}` must not be NaN, got {value!r}.')
  if x < lower:
    raise ValueError(f'`{name}` must be >= {lower}, got {value!r}.')
  if upper is not None and (x > upper or (x == upper and not upper_inclusive)):
    bracket = ']' if upper_inclusive else ')'
    raise ValueError(
        f'`{name}` must lie in [{lower}, {upper}{bracket}, got {value!r}.')


def check_positive(name: str, value: Any) -> None:
  """Raises ``ValueError`` if a concrete ``value`` is not > 0."""
  x = concrete_float(value)
  if x is not None and not x > 0:
    raise ValueError(f'`{name}` must be > 0, got {value!r}.')


def path_str(path: tuple[Any, ...]) -> str:
  """A readable pytree path such as ``'params/Dense_0/kernel'``."""
  return jax.tree_util.keystr(path, simple=True, separator='/') or '<root>'


def check_float_leaves(tree: Any, what: str) -> None:
  """Raises ``TypeError`` naming the path of any non-floating-point leaf."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = getattr(leaf, 'dtype', None)
    if dtype is None:
      dtype = np.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
          f'{what} leaf {path_str(path)!r} has dtype {dtype}; optax_lambc '
          'needs floating-point (or complex) leaves. Exclude integer state '
          '(e.g. step counters) from the optimized tree.')


def check_same_structure(updates: Any, params: Any) -> None:
  """Raises ``ValueError`` naming both structures when they differ."""
  u_struct = jax.tree.structure(updates)
  p_struct = jax.tree.structure(params)
  if u_struct != p_struct:
    raise ValueError(
        'updates and params must have the same tree structure; got updates '
        f'{u_struct} and params {p_struct}.')


def check_updates_and_params(updates: Any, params: Any) -> None:
  """All pytree checks an ``update`` call makes before any compute."""
  check_same_structure(updates, params)
  check_float_leaves(updates, 'updates')
  check_float_leaves(params, 'params')


def broadcast_prefix(prefix: Any, full: Any, name: str) -> Any:
  """Broadcasts a prefix tree ``prefix`` (e.g. a mask) to ``full``'s shape."""
  try:
    return jax.tree.broadcast(prefix, full)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f'`{name}` must be a tree prefix of the params; got {name} structure '
        f'{jax.tree.structure(prefix)} and params structure '
        f'{jax.tree.structure(full)}.') from e
