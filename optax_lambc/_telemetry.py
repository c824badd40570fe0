"""Trust-ratio telemetry: find the layer-wise state, name its layers."""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lambc import _layers
from optax_lambc._lambc import ScaleByClippedTrustRatioState


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LayerNames:
  """The parameter path and layer-axes shape of each leaf, in vector order."""

  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]

  def keys(self) -> list[str]:
    """One name per vector entry: the path, with ``[i]`` for stacked slices."""
    return [f'{p}[{",".join(map(str, i))}]' if shape else p for p, shape in
            zip(self.paths, self.shapes, strict=True)
            for i in np.ndindex(*shape)]


def _array(x: Any) -> Any:
  """The array of a state field (unwrapping a Flax ``nnx.Variable``)."""
  get = getattr(x, 'get_value', None)
  return get() if callable(get) else x


_FIELDS = ('raw', 'applied', 'lower', 'upper')


def _fractions(values: Any, xp: Any) -> tuple[Any, Any]:
  """Shares of layers raised to the lower and cut to the upper bound (0 with
  no layers), in NumPy or ``jnp`` (``xp``)."""
  n = max(values.shape[1], 1)
  return xp.sum(values[1] > values[0]) / n, xp.sum(values[1] < values[0]) / n


class TrustRatioStats(NamedTuple):
  """The trust ratios of the last update, one column per layer.

  ``values`` stacks four vectors with one entry per adapted layer (a stacked
  leaf gives one per slice): the raw ratio, the applied ratio and the lower
  and upper bounds, read as :attr:`raw`, :attr:`applied`, :attr:`lower` and
  :attr:`upper`; ``names`` says which parameter each entry belongs to. One
  array, so a jitted step returns it at the cost of one small fusion;
  :meth:`as_metrics` and :meth:`by_path` split it by parameter on the host.
  """

  values: jax.Array
  """``(4, num_layers)``: raw, applied, lower and upper, in that order."""
  names: LayerNames
  """Static: the parameter path and layer-axes shape of each leaf."""

  raw = property(lambda self: self.values[0])
  """Unclipped ratio per layer (NaN after a non-finite update)."""
  applied = property(lambda self: self.values[1])
  """Ratio actually applied, ``clip(raw, lower, upper)``."""
  lower = property(lambda self: self.values[2])
  """Lower bound in force per layer."""
  upper = property(lambda self: self.values[3])
  """Upper bound in force per layer (``inf``: none)."""
  clipped_lower_fraction = property(lambda s: _fractions(s.values, jnp)[0])
  """Fraction of layers raised to the lower bound (0 with no layers)."""
  clipped_upper_fraction = property(lambda s: _fractions(s.values, jnp)[1])
  """Fraction of layers cut to the upper bound (0 with no layers)."""

  def by_path(self, field: str = 'applied'
              ) -> dict[str, np.ndarray | jax.Array]:
    """One field by parameter path, each of its leaf's layer-axes shape.

    On the host the vector is fetched once and split as NumPy arrays (no
    per-leaf device dispatch); inside ``jit`` (or on arrays that are not fully
    addressable) it is split into slices of the device vector.

    Args:
      field: ``'raw'``, ``'applied'``, ``'lower'`` or ``'upper'``.

    Returns:
      ``{path: array}``, each of its leaf's layer-axes shape (``()`` for a
      leaf that is one layer).

    Raises:
      ValueError: If ``field`` is not one of the four fields.
    """
    if field not in _FIELDS:
      raise ValueError(f'field must be one of {_FIELDS}, got {field!r}.')
    values = self.values
    if not isinstance(values, jax.core.Tracer) and getattr(
        values, 'is_fully_addressable', True):
      values = np.asarray(values)
    sizes = [int(np.prod(s)) for s in self.names.shapes]
    row, starts = values[_FIELDS.index(field)], np.cumsum([0] + sizes)
    return {p: row[a:a + n].reshape(s) for p, s, a, n in zip(
        self.names.paths, self.names.shapes, starts[:-1], sizes, strict=True)}

  def as_metrics(self, prefix: str = 'trust_ratio') -> dict[str, float]:
    """A flat ``{name: float}`` dict for a metrics writer (fetches once).

    Keys are ``<prefix>/<field>/<path>``, with ``[i]`` (``[i,j]`` for two
    layer axes) appended for each slice of a stacked leaf, plus
    ``<prefix>/clipped_lower_fraction`` and ``.../clipped_upper_fraction``.
    Call it on the host, on stats a jitted step returned.

    Raises:
      TypeError: inside a trace (``jit``, ``vmap``, ``grad``), saying so.
    """
    if isinstance(self.values, jax.core.Tracer):
      raise TypeError(
          'TrustRatioStats.as_metrics() is a host call: return the stats '
          '(one array) from the jitted step and call as_metrics() on the '
          'result, outside jit.')
    values = np.asarray(self.values)
    out = {f'{prefix}/clipped_{side}_fraction': float(f) for side, f in
           zip(('lower', 'upper'), _fractions(values, np), strict=True)}
    for field, row in zip(_FIELDS, values.tolist(), strict=True):
      out.update({f'{prefix}/{field}/{key}': v for key, v in
                  zip(self.names.keys(), row, strict=True)})
    return out


def _is_state(x: Any) -> bool:
  return isinstance(x, ScaleByClippedTrustRatioState)


def trust_ratio_stats(opt_state: optax.OptState, required: bool = True
                      ) -> TrustRatioStats:
  """The trust ratios recorded in an optimizer state, named by parameter.

  The :class:`optax_lambc.ScaleByClippedTrustRatioState` is found anywhere in
  ``opt_state``: inside ``optax.chain``, ``inject_hyperparams``, ``masked``,
  ``MultiSteps``, ``apply_if_finite``, ``multi_transform`` or an
  ``nnx.Optimizer``. Several are concatenated (a path seen twice gets a
  ``#i`` suffix). The layer names are the parameter paths of each state's
  ``layers`` record, which ``init`` built from the params it was given. The
  call only gathers device arrays: return its result from a jitted step and
  call :meth:`TrustRatioStats.as_metrics` on the host.

  Args:
    opt_state: An optimizer state holding one or more clipped trust-ratio
      states.
    required: If False, a state without one (``optax.lamb``'s, say) gives
      empty stats (no layers) instead of an error, so one train step serves
      every optimizer.

  Returns:
    A :class:`TrustRatioStats`.

  Raises:
    ValueError: If ``opt_state`` holds no clipped trust-ratio state and
      ``required`` is True.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax, optax_lambc
    >>> opt = optax.MultiSteps(optax_lambc.lambc(1e-2), every_k_schedule=1)
    >>> params = {'w': jnp.array([3.0, 4.0]), 'b': jnp.zeros(2)}
    >>> grads = {'w': jnp.array([1.0, 0.0]), 'b': jnp.ones(2)}
    >>> _, state = opt.update(grads, opt.init(params), params)
    >>> stats = optax_lambc.trust_ratio_stats(state)
    >>> {path: round(float(r), 3) for path, r in stats.by_path('raw').items()}
    {'b': 1.0, 'w': 5.0}
    >>> stats.as_metrics()['trust_ratio/applied/w']
    1.0
    >>> float(stats.clipped_upper_fraction)
    0.5
  """
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_state)
            if _is_state(s)]
  if not states and required:
    raise ValueError(
        'opt_state contains no ScaleByClippedTrustRatioState; build the '
        'optimizer with optax_lambc.lambc or scale_by_clipped_trust_ratio, or '
        'pass required=False for empty stats.')
  paths, shapes = [], []
  for i, s in enumerate(states):
    for keys, grid in _layers.flat_params(s.layers):
      if _layers.is_masked(grid) or (not keys and not jnp.size(grid)):
        continue  # not adapted, or a tree with no leaves
      path = _layers.path_str(keys)
      paths.append(path if path not in paths else f'{path}#{i}')
      shapes.append(tuple(d for d in jnp.shape(_array(grid)) if d != 1))
  fields = ('raw_ratio', 'applied_ratio', 'lower', 'upper')
  values = jnp.concatenate([jnp.zeros([4, 0])] + [
      jnp.stack([_array(getattr(s, f)) for f in fields]) for s in states],
                           axis=1)
  return TrustRatioStats(values, LayerNames(tuple(paths), tuple(shapes)))


def nonfinite_leaves(tree: optax.Updates) -> dict[str, jax.Array]:
  """Which leaves hold a NaN or an infinity, keyed by parameter path.

  ``optax.apply_if_finite`` discards the whole inner state of a step it skips,
  so the trust-ratio telemetry of a skipped step is never recorded. Call this
  on the step's gradients inside the jitted step to learn which layers went
  non-finite: device bools, no host sync.

  Args:
    tree: Gradients, updates or params.

  Returns:
    ``{path: bool scalar}``, True where the leaf has a non-finite value.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> bad = optax_lambc.nonfinite_leaves(
    ...     {'enc': jnp.array([1.0, jnp.nan]), 'head': jnp.ones(2)})
    >>> [path for path, b in bad.items() if b]
    ['enc']
  """
  return {_layers.path_str(_layers.path_keys(path)):
          ~jnp.all(jnp.isfinite(leaf))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
