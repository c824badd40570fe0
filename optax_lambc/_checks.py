"""Input checks and key-path matching shared by the transforms (private).

Where strictness applies, once:

* **Numbers** (bounds, coefficients, decays) are checked when an optimizer is
  built, if they are Python or NumPy numbers. JAX arrays and tracers are what
  ``optax.inject_hyperparams`` and traced meta-learning pass; they follow the
  run-time rules instead (a bound is clamped at 0 and the upper bound wins).
* **Trees given per layer** (``layer_axes``, per-layer bounds, bool masks) are
  matched to the params by key path when a transform first sees a params
  structure: at ``init``, or at an ``update`` whose structure ``init`` did not
  see. An entry that names no path of the params is a typo, and a real leaf
  that no entry covers is an error; both name the argument and the path.
* **Masked-out leaves count as paths.** ``optax.masked`` and
  ``optax.multi_transform`` show an inner transform the full structure with
  ``optax.MaskedNode`` in place of masked-out leaves (or whole subtrees), so a
  whole-model tree is checked there just as strictly: an entry at or below a
  masked-out node is not a typo, and masked-out leaves need no entry. A
  single value (a root entry) fits any tree. A tree with no leaves at all (an
  empty dict, ``optax.tree.map_params``'s placeholder) has nothing to scale
  and nothing to match, so any per-layer tree is accepted there.
"""

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# optax's own wording for a transform called without params.
NO_PARAMS_MSG = (
    'You are using a transformation that requires the current value of '
    'parameters, but you are not passing `params` when calling `update`.')

KeyPath = tuple[Any, ...]


def is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def is_build_time_number(value: Any) -> bool:
  return isinstance(value, (numbers.Number, np.generic)) or (
      isinstance(value, np.ndarray) and value.ndim == 0)


def check_number(name: str, value: Any, *, lower: float = 0.0,
                 upper: float | None = None) -> None:
  """Checks a hyper-parameter given as a number at build time.

  Python and NumPy numbers must be real, not NaN, ``>= lower`` and (if given)
  ``< upper``. JAX arrays, tracers and schedules pass through unchecked.

  Raises:
    TypeError: for a bool or a string (naming ``name``).
    ValueError: for a NaN or out-of-range number (naming ``name``).
  """
  if isinstance(value, (bool, np.bool_)) or (
      hasattr(value, 'dtype') and np.dtype(value.dtype) == np.bool_):
    raise TypeError(f'`{name}` must be a number, got the bool {value!r}.')
  if isinstance(value, (str, bytes)):
    raise TypeError(f'`{name}` must be a number, got the string {value!r}.')
  if not is_build_time_number(value):
    return
  if isinstance(value, complex) or np.iscomplexobj(value):
    raise TypeError(f'`{name}` must be a real number, got {value!r}.')
  x = float(value)
  if math.isnan(x):
    raise ValueError(f'`{name}` must not be NaN, got {value!r}.')
  if x < lower:
    raise ValueError(f'`{name}` must be >= {lower}, got {value!r}.')
  if upper is not None and x >= upper:
    raise ValueError(f'`{name}` must lie in [{lower}, {upper}), got {value!r}.')


def check_positive(name: str, value: Any) -> None:
  """Like :func:`check_number`, but the number must be > 0."""
  check_number(name, value)
  if is_build_time_number(value) and not float(value) > 0:
    raise ValueError(f'`{name}` must be > 0, got {value!r}.')


def key_str(k: Any) -> str:
  """One path entry as plain text: dict key, attribute or index."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_keys(path: KeyPath) -> tuple[str, ...]:
  """A key path as plain strings, without Flax Variables' ``.value`` step.

  An ``nnx.Variable`` flattens to its value under the attribute ``value``;
  dropping that step makes ``nnx.State`` paths equal to plain-dict paths.
  """
  keys = tuple(map(key_str, path))
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and (
      path[-1].name == 'value'):
    keys = keys[:-1]
  return keys


def path_str(path: KeyPath | tuple[str, ...]) -> str:
  """A readable pytree path such as ``'params/Dense_0/kernel'``."""
  keys = path if all(isinstance(k, str) for k in path) else path_keys(path)
  return '/'.join(keys) or '<root>'


def flatten_params(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
  """``(path keys, leaf)`` for every leaf, masked-out leaves included."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_masked)[0]
  return [(path_keys(path), leaf) for path, leaf in flat]


def check_float_leaves(tree: Any, what: str = 'params') -> None:
  """Raises ``TypeError`` naming the path of any non-floating-point leaf."""
  for keys, leaf in flatten_params(tree):
    if is_masked(leaf):
      continue
    dtype = getattr(leaf, 'dtype', None)
    if dtype is None:
      dtype = np.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
          f'{what} leaf {path_str(keys)!r} has dtype {dtype}; optax_lambc '
          'needs floating-point (or complex) leaves. Exclude integer state '
          '(e.g. step counters) from the optimized tree.')


def per_leaf(spec: Any, params: Any, name: str, *,
             is_leaf: Callable[[Any], bool] | None = None) -> list[Any]:
  """The entry of a per-layer tree ``spec`` that applies to each leaf.

  An entry at path ``enc`` applies to every leaf under ``enc`` (the longest
  matching prefix wins). Matching by path rather than by node type lets one
  plain nested dict describe params held as a dict, a linen ``FrozenDict`` or
  an ``nnx.State``. The rules are those of this module's docstring.

  Returns:
    One value per leaf of ``params`` in ``jax.tree.leaves`` order (masked-out
    leaves have none).

  Raises:
    ValueError: naming ``name`` and the path, for an entry that names no path
      of ``params`` or a leaf that no entry covers.
  """
  entries = {path_keys(path): value for path, value in
             jax.tree_util.tree_flatten_with_path(spec, is_leaf=is_leaf)[0]}
  flat = flatten_params(params)
  paths = [keys for keys, _ in flat]
  known = {keys[:n] for keys in paths for n in range(len(keys) + 1)}
  masked = [keys for keys, leaf in flat if is_masked(leaf)]
  typos = [k for k in entries if flat and k and k not in known and not any(
      k[:len(m)] == m for m in masked)]
  if typos:
    near = [p for p in paths if p[:len(typos[0]) - 1] == typos[0][:-1]]
    hint = (f'; no entry covers {path_str(near[0])!r}' if near else
            f'; params paths look like {[path_str(p) for p in paths[:3]]}')
    raise ValueError(f'`{name}` entry {path_str(typos[0])!r} matches no '
                     f'params leaf (a typo?){hint}.')
  out = []
  for keys, leaf in flat:
    if is_masked(leaf):
      continue
    match = next((keys[:n] for n in range(len(keys), -1, -1)
                  if keys[:n] in entries), None)
    if match is None:
      raise ValueError(
          f'`{name}` has no entry for the params leaf {path_str(keys)!r}; it '
          'must be a tree prefix of the params (matched by key path).')
    out.append(entries[match])
  return out


def is_tree_spec(spec: Any) -> bool:
  """True for a per-layer tree (not None, a callable or a single value)."""
  return not (spec is None or callable(spec) or
              jax.tree_util.treedef_is_leaf(jax.tree.structure(spec)))


def checked_mask(mask: optax.MaskOrFn, name: str,
                 bind: Callable[[Any], Any] | None = None,
                 ) -> Callable[[Any], Any]:
  """A mask callable for ``optax.masked`` that checks ``mask`` first.

  It resolves a bool tree (or a callable returning one; ``bind`` may adapt the
  callable, e.g. to pass it ``layer_axes``) against the tree it is given and
  returns a full bool tree of that structure, so a typo'd key or a non-bool
  leaf fails with a message naming ``name``.
  """

  def resolve(tree: Any) -> Any:
    fn = bind(mask) if (bind is not None and callable(mask)) else mask
    spec = fn(tree) if callable(fn) else fn
    values = iter(per_leaf(spec, tree, name))
    out = []
    for keys, leaf in flatten_params(tree):
      if is_masked(leaf):
        out.append(False)
        continue
      m = next(values)
      if not isinstance(m, (bool, np.bool_)):
        raise TypeError(f'`{name}` at {path_str(keys)!r} must be a Python '
                        f'bool, got {m!r}.')
      out.append(bool(m))
    return jax.tree.unflatten(jax.tree.structure(tree, is_leaf=is_masked),
                              out)

  return resolve


def check_same_shapes(updates: Sequence[Any], params: Sequence[Any],
                      paths: Callable[[], list[str]]) -> None:
  """Raises ``ValueError`` if an update leaf's shape differs from its param's.

  ``paths`` is only called to name the leaf in the error.
  """
  for i, (u, p) in enumerate(zip(updates, params, strict=True)):
    if jnp.shape(u) != jnp.shape(p):
      raise ValueError(
          f'updates leaf {paths()[i]!r} has shape {jnp.shape(u)} but the '
          f'params leaf has shape {jnp.shape(p)}.')
