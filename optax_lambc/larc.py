"""LARC: LARS whose local learning rate is clipped at the global one."""

import math

import jax
import jax.numpy as jnp
import optax

from optax_lambc import _validation
from optax_lambc import alias
from optax_lambc import layers


def _value(x: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
  return x(count) if callable(x) else x


def scale_by_larc_trust_ratio(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    clip: bool = True,
    weight_decay_mask: optax.MaskOrFn = None,
    trust_ratio_mask: optax.MaskOrFn = None,
    layer_axes: layers.LayerAxes = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformation:
  r"""Adds weight decay, then scales each layer by LARC's local rate.

  Per adapted layer (a leaf, or a slice of a stacked leaf, see
  :mod:`optax_lambc.layers`) with weight :math:`w` and gradient :math:`g`:

  .. math::
    \ell = \frac{c\,\lVert w\rVert}{\lVert g\rVert + \lambda\lVert w\rVert
    + \epsilon},\qquad
    s = \begin{cases}\min(\ell/\eta_t, 1) & \text{clip}\\ \ell & \text{no
    clip}\end{cases},\qquad u = s\,(g + \lambda w),

  with :math:`\ell = 1` where a norm is 0. Multiplied later by the learning
  rate :math:`\eta_t`, the effective per-layer rate is
  :math:`\min(\ell, \eta_t)` with clipping and :math:`\eta_t\ell` without:
  apex ``LARC`` and timm ``Lars(trust_clip=True)``. Layers outside
  ``trust_ratio_mask`` get :math:`u = g + \lambda w` (:math:`s = 1`; the mask is
  applied with ``optax.masked``). The state is a
  :class:`optax_lambc.ScaleByClippedTrustRatioState` whose raw ratio is
  :math:`\ell/\eta_t` (clip) or :math:`\ell` and whose applied ratio is
  :math:`s`, so :func:`optax_lambc.trust_ratio_stats` reads it.

  Args:
    learning_rate: The global rate :math:`\eta_t` (number or schedule) that the
      clip is relative to; it must equal the one applied after momentum.
    weight_decay: :math:`\lambda`, a number or a schedule.
    trust_coefficient: :math:`c` (> 0).
    eps: :math:`\epsilon`.
    clip: Clip the local rate at the global one (LARC) or not (LARS).
    weight_decay_mask: Bool tree or callable; False leaves get no decay.
    trust_ratio_mask: Bool tree or callable; False leaves get :math:`s = 1`.
    layer_axes: Axes of stacked layers, as in
      :func:`optax_lambc.scale_by_clipped_trust_ratio`.
    axis_name: Mapped axis name(s) for manually sharded params.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> t = optax_lambc.scale_by_larc_trust_ratio(0.1, trust_coefficient=0.02)
    >>> params = {'w': jnp.array([3.0, 4.0])}          # |w| = 5
    >>> u, s = t.update({'w': jnp.array([0.3, 0.4])}, t.init(params), params)
    >>> print(f"{s.raw_ratio['w']:.3f} {s.applied_ratio['w']:.3f}")  # 0.2/0.1
    2.000 1.000
  """
  _validation.check_number('learning_rate', learning_rate)
  _validation.check_number('weight_decay', weight_decay)
  _validation.check_positive('trust_coefficient', trust_coefficient)
  _validation.check_number('eps', eps)
  strict = trust_ratio_mask is None
  all_true = lambda tree: jax.tree.map(lambda _: True, tree)
  decay_mask = all_true if weight_decay_mask is None else weight_decay_mask

  def init_fn(params):
    _validation.check_float_leaves(params, 'params')
    if strict:  # else checked on the full params by masked_with_checks
      _validation.checked_mask(decay_mask, 'weight_decay_mask')(params)
    axes = layers.resolve_layer_axes(layer_axes, params, strict=strict)
    template = layers.ratio_template(params, axes)
    return layers.initial_state(
        template, jax.tree.map(jnp.zeros_like, template),
        jax.tree.map(lambda t: jnp.full_like(t, 1 if clip else math.inf),
                     template))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(_validation.NO_PARAMS_MSG)
    _validation.check_updates_and_params(updates, params)
    axes = layers.resolve_layer_axes(layer_axes, params, strict=strict)
    spec = decay_mask(params) if callable(decay_mask) else decay_mask
    decay = _validation.per_leaf(spec, params, 'weight_decay_mask',
                                 strict=strict)
    lr = _value(learning_rate, state.count)
    wd = _value(weight_decay, state.count)

    def raw_fn(g, p, ax, i):
      lam = wd if decay[i] else 0.0
      w_norm = layers.leaf_norm(p, ax, axis_name)
      g_norm = layers.leaf_norm(g, ax, axis_name)
      local = layers.trust_ratio(trust_coefficient * w_norm,
                                 g_norm + lam * w_norm + eps, w_norm, g_norm)
      raw = (local / lr if clip else local).astype(w_norm.dtype)
      return raw, (g + lam * p if decay[i] else g)

    out, raw, applied = layers.scale_layers(raw_fn, updates, params, axes,
                                            state.lower, state.upper)
    return out, state._replace(count=optax.safe_increment(state.count),
                               raw_ratio=raw, applied_ratio=applied)

  core = layers.masked_with_checks(
      optax.GradientTransformation(init_fn, update_fn), trust_ratio_mask,
      'trust_ratio_mask', layer_axes, {'weight_decay_mask': weight_decay_mask})
  if trust_ratio_mask is None:
    return core
  # optax.masked passes the layers outside the trust-ratio mask through as
  # raw gradients; they still get their weight decay here.
  adapt = _validation.checked_mask(trust_ratio_mask, 'trust_ratio_mask')
  decayed = _validation.checked_mask(decay_mask, 'weight_decay_mask')
  others = lambda tree: jax.tree.map(lambda a, d: (not a) and d, adapt(tree),
                                     decayed(tree))
  return optax.chain(core, optax.masked(
      optax.add_decayed_weights(weight_decay), others))


def larc(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: optax.MaskOrFn = None,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    eps: jax.typing.ArrayLike = 1e-8,
    trust_ratio_mask: optax.MaskOrFn = None,
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    *,
    clip: bool = True,
    layer_axes: layers.LayerAxes = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""LARC: momentum SGD with LARS local rates clipped at the global rate.

  ``chain(`` :func:`scale_by_larc_trust_ratio` ``, trace(momentum, nesterov),
  scale_by_learning_rate)``: the gradient plus weight decay is scaled by
  :math:`\min(\ell/\eta_t, 1)` (``clip=True``) or :math:`\ell`, then goes
  through PyTorch-style momentum (no dampening) and the learning rate. The clip
  follows a learning-rate schedule step by step.

  The positional arguments are ``optax.lars``'s, in its order, so a call
  written for ``optax.lars`` means the same thing here. How it differs from
  ``optax.lars``: ``optax.lars`` takes the ratio on
  :math:`\lVert g + \lambda w\rVert` and never clips; LARC takes it on
  :math:`\lVert g\rVert + \lambda\lVert w\rVert` (apex, timm) and, with
  ``clip=True``, never lets a layer's rate exceed the global one. Defaults
  follow timm's ``Lars`` (``trust_coefficient=0.001``, ``eps=1e-8``); apex uses
  ``trust_coefficient=0.02``.

  Args:
    learning_rate: Global rate :math:`\eta_t`, number or schedule.
    weight_decay: :math:`\lambda` (number or schedule), added to the gradient
      before scaling.
    weight_decay_mask: Bool tree or callable; False leaves get no decay.
    trust_coefficient: LARS's :math:`c` (> 0).
    eps: Added to the ratio's denominator.
    trust_ratio_mask: Bool tree or callable; False leaves are not adapted.
    momentum: Momentum decay in [0, 1).
    nesterov: Nesterov momentum.
    clip: Clip the local rate at the global one (True: LARC; False: LARS).
    layer_axes: Axes of stacked layers (see :mod:`optax_lambc.layers`).
    axis_name: Mapped axis name(s) for manually sharded params.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> opt = optax_lambc.larc(0.1, trust_coefficient=0.02)
    >>> params = {'w': jnp.array([3.0, 4.0])}          # |w| = 5
    >>> grads = {'w': jnp.array([0.3, 0.4])}           # |g| = 0.5
    >>> updates, _ = opt.update(grads, opt.init(params), params)
    >>> updates['w']  # local rate 0.2 is clipped to the global 0.1
    Array([-0.03, -0.04], dtype=float32)

  References:
    You, Gitman & Ginsburg, `Large Batch Training of Convolutional Networks
    <https://arxiv.org/abs/1708.03888>`_, 2017.

    NVIDIA apex, ``apex.parallel.LARC``.
  """
  _validation.check_number('momentum', momentum, upper=1.0)
  return alias.with_input_checks(optax.chain(
      scale_by_larc_trust_ratio(
          learning_rate, weight_decay, trust_coefficient, eps, clip=clip,
          weight_decay_mask=weight_decay_mask,
          trust_ratio_mask=trust_ratio_mask, layer_axes=layer_axes,
          axis_name=axis_name),
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale_by_learning_rate(learning_rate),
  ))
