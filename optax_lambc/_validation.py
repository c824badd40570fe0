"""Argument and input checks shared by the transforms (private).

Hyper-parameters that are concrete numbers are checked when an optimizer is
built; traced values (inside ``jit`` or ``optax.inject_hyperparams``) cannot be
inspected and are passed through. Pytree checks run at trace time, so they cost
nothing per step.
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from optax import MaskOrFn

# optax's own wording for a transform called without params.
NO_PARAMS_MSG = (
    'You are using a transformation that requires the current value of '
    'parameters, but you are not passing `params` when calling `update`.')


def concrete_float(value: Any) -> float | None:
  """Returns ``value`` as a Python float if it is a concrete scalar number."""
  if isinstance(value, (bool, np.bool_)):
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
  reject_bool(name, value)
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


def reject_bool(name: str, value: Any) -> None:
  """Raises ``TypeError`` for a bool where a number is expected."""
  if isinstance(value, (bool, np.bool_)) or (
      isinstance(value, (np.ndarray, jax.Array)) and value.dtype == bool):
    raise TypeError(f'`{name}` must be a number, got the bool {value!r}.')


def check_positive(name: str, value: Any) -> None:
  """Raises ``ValueError`` if a concrete ``value`` is not > 0."""
  reject_bool(name, value)
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


def check_updates_and_params(updates: Any, params: Any) -> None:
  """All pytree checks an ``update`` call makes before any compute.

  Same structure, floating-point leaves, and the same shape leaf by leaf;
  every message names the pytree path.
  """
  u_struct, p_struct = jax.tree.structure(updates), jax.tree.structure(params)
  if u_struct != p_struct:
    raise ValueError(
        'updates and params must have the same tree structure; got updates '
        f'{u_struct} and params {p_struct}.')
  check_float_leaves(updates, 'updates')
  check_float_leaves(params, 'params')
  for (path, u), p in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                          jax.tree.leaves(params), strict=True):
    if jnp.shape(u) != jnp.shape(p):
      raise ValueError(
          f'updates leaf {path_str(path)!r} has shape {jnp.shape(u)} but the '
          f'params leaf has shape {jnp.shape(p)}.')


def is_tree_spec(spec: Any) -> bool:
  """True for a per-layer tree (not None, a callable or a single value)."""
  return not (spec is None or callable(spec) or jax.tree_util.treedef_is_leaf(
      jax.tree.structure(spec)))


def key_str(k: Any) -> str:
  """One path entry as plain text: dict key, attribute or index."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def per_leaf(prefix: Any, tree: Any, name: str, *,
             is_leaf: Callable[[Any], bool] | None = None,
             strict: bool = True) -> list[Any]:
  """The entry of a per-layer ``prefix`` tree that applies to each leaf.

  Entries are matched to ``tree``'s leaves by key path: an entry at path
  ``enc`` applies to every leaf under ``enc``. Matching by path (not by node
  type) lets one plain nested dict describe the params whether they are held as
  a dict, a Flax ``nnx.State`` of Variables or a linen ``FrozenDict``.

  Args:
    prefix: A tree whose leaves are the per-layer values.
    tree: The params (or updates).
    name: The user's argument name, for error messages.
    is_leaf: Which nodes of ``prefix`` are values (e.g. ``None``).
    strict: Whether an entry that matches no leaf is an error (a typo). Off
      only where the tree is a masked view of checked params.

  Returns:
    One value per leaf of ``tree``, in ``jax.tree.leaves`` order.

  Raises:
    ValueError: naming ``name`` and the path, if a leaf has no entry or (with
      ``strict``) an entry matches no leaf.
  """
  entries = {tuple(map(key_str, path)): value for path, value in
             jax.tree_util.tree_flatten_with_path(prefix, is_leaf=is_leaf)[0]}
  used, out, missing = set(), [], []
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = tuple(map(key_str, path))
    match = next((keys[:n] for n in range(len(keys), -1, -1)
                  if keys[:n] in entries), None)
    if match is None:
      missing.append(path_str(path))
      continue
    used.add(match)
    out.append(entries[match])
  unused = [k for k in entries if k not in used]
  if strict and unused:
    hint = (f'; no entry covers {missing[0]!r}' if missing else
            '; params paths look like ' + repr([
                path_str(p) for p, _ in
                jax.tree_util.tree_flatten_with_path(tree)[0][:3]]))
    raise ValueError(
        f'`{name}` entry {"/".join(unused[0]) or "<root>"!r} matches no '
        f'params leaf (a typo?){hint}.')
  if missing:
    raise ValueError(
        f'`{name}` has no entry for the params leaf {missing[0]!r}; it must '
        'be a tree prefix of the params (matched by key path).')
  return out


def checked_mask(mask: MaskOrFn, name: str) -> Callable[[Any], Any]:
  """A mask callable for ``optax.masked`` that validates ``mask`` first.

  It resolves a bool tree (or a callable returning one) against the tree it is
  given and returns a full bool tree of the same structure, so a typo'd key or
  a non-bool leaf fails with a message naming ``name``, at ``init``.
  """

  def resolve(tree: Any) -> Any:
    spec = mask(tree) if callable(mask) else mask
    values = per_leaf(spec, tree, name)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    for path, m in zip(paths, values, strict=True):
      if not isinstance(m, (bool, np.bool_)):
        raise TypeError(f'`{name}` at {path_str(path)!r} must be a Python '
                        f'bool, got {m!r}.')
    return jax.tree.unflatten(jax.tree.structure(tree),
                              [bool(m) for m in values])

  return resolve
