"""LARC: LARS whose local learning rate is clipped at the global one."""

import functools

import jax
import optax

from optax_lambc import _lambc
from optax_lambc import _layers
from optax_lambc._layers import LayerAxes


def _value(x: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
  return x(count) if callable(x) else x


def _core(learning_rate, weight_decay, trust_coefficient, eps, clip, decayed,
          layer_axes, axis_name) -> optax.GradientTransformation:
  """LARC's per-layer scaling of layers that are (``decayed``) or are not
  decayed: ``s (g + lambda w)`` or ``s g``."""

  def ratio_fn(w_norm, g_norm, count):
    lam = _value(weight_decay, count) if decayed else 0.0
    local = _layers.ratio(trust_coefficient * w_norm,
                          g_norm + lam * w_norm + eps, w_norm, g_norm)
    return (local / _value(learning_rate, count) if clip else local).astype(
        w_norm.dtype)

  def direction_fn(grads, weights, count):
    wd = _value(weight_decay, count)
    return [g + wd * p for g, p in zip(grads, weights, strict=True)]

  return _lambc.layerwise(ratio_fn, 0.0, 1.0 if clip else None, layer_axes,
                          axis_name, direction_fn if decayed else None)


def _both(adapt: optax.MaskOrFn, decay: optax.MaskOrFn, want: tuple[bool,
                                                                     bool],
          layer_axes: LayerAxes):
  """The mask of the leaves whose (adapted, decayed) flags equal ``want``."""

  def mask(params):
    flags = [_layers.mask_flags(m, params, name, layer_axes) if m is not None
             else [True] * len(_layers.flat_params(params))
             for m, name in ((adapt, 'trust_ratio_mask'),
                             (decay, 'weight_decay_mask'))]
    return jax.tree.unflatten(
        jax.tree.structure(params, is_leaf=_layers.is_masked),
        [(a, d) == want for a, d in zip(*flags, strict=True)])

  return mask


def scale_by_larc_trust_ratio(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    eps: jax.typing.ArrayLike = 1e-8, *, clip: bool = True,
    weight_decay_mask: optax.MaskOrFn = None,
    trust_ratio_mask: optax.MaskOrFn = None, layer_axes: LayerAxes = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adds weight decay, then scales each layer by LARC's local rate.

  Per adapted layer (a leaf, or a slice of a stacked leaf, see
  ``layer_axes``) with weight :math:`w` and gradient :math:`g`:

  .. math::
    \ell = \frac{c\,\lVert w\rVert}{\lVert g\rVert + \lambda\lVert w\rVert
    + \epsilon},\qquad
    s = \begin{cases}\min(\ell/\eta_t, 1) & \text{clip}\\ \ell & \text{no
    clip}\end{cases},\qquad u = s\,(g + \lambda w),

  with :math:`\ell = 1` where a norm is 0. Multiplied later by the learning
  rate :math:`\eta_t`, the effective per-layer rate is
  :math:`\min(\ell, \eta_t)` with clipping and :math:`\eta_t\ell` without:
  apex ``LARC`` and timm ``Lars(trust_clip=True)``. Layers outside
  ``trust_ratio_mask`` get :math:`u = g + \lambda w` (:math:`s = 1`). Both
  masks are resolved once, by ``init``. The state holds a
  :class:`optax_lambc.ScaleByClippedTrustRatioState` (two, one for decayed
  and one for undecayed layers, when a mask is given) whose raw ratio is
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
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_lambc
    >>> t = optax_lambc.scale_by_larc_trust_ratio(0.1, trust_coefficient=0.02)
    >>> params = {'w': jnp.array([3.0, 4.0])}          # |w| = 5
    >>> u, s = t.update({'w': jnp.array([0.3, 0.4])}, t.init(params), params)
    >>> print(s.raw_ratio.round(3), s.applied_ratio)  # local 0.2, global 0.1
    [2.] [1.]
  """
  for name, value in (('learning_rate', learning_rate),
                      ('weight_decay', weight_decay), ('eps', eps)):
    _layers.check_number(name, value)
  _layers.check_number('trust_coefficient', trust_coefficient, positive=True)
  core = functools.partial(_core, learning_rate, weight_decay,
                           trust_coefficient, eps, clip,
                           layer_axes=layer_axes, axis_name=axis_name)
  if weight_decay_mask is None and trust_ratio_mask is None:
    return optax.with_extra_args_support(core(decayed=True))
  # Three disjoint sets of leaves: adapted and decayed, adapted only, and
  # decayed only (outside the trust-ratio mask: plain weight decay).
  pick = lambda *want: _both(trust_ratio_mask, weight_decay_mask, want,
                             layer_axes)
  return optax.chain(
      _layers.masked(core(decayed=True), pick(True, True), 'mask'),
      _layers.masked(core(decayed=False), pick(True, False), 'mask'),
      _layers.masked(optax.add_decayed_weights(weight_decay),
                     pick(False, True), 'mask'))


def larc(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: optax.MaskOrFn = None,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    eps: jax.typing.ArrayLike = 1e-8, trust_ratio_mask: optax.MaskOrFn = None,
    momentum: jax.typing.ArrayLike = 0.9, nesterov: bool = False, *,
    clip: bool = True, layer_axes: LayerAxes = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""LARC: momentum SGD with LARS local rates clipped at the global rate.

  ``chain(`` :func:`scale_by_larc_trust_ratio` ``, trace(momentum, nesterov),
  scale_by_learning_rate)``: the gradient plus weight decay is scaled by
  :math:`\min(\ell/\eta_t, 1)` (``clip=True``) or :math:`\ell`, then goes
  through PyTorch-style momentum (no dampening) and the learning rate. The clip
  follows a learning-rate schedule step by step.

  It takes ``optax.lars``'s positional arguments in ``optax.lars``'s order,
  each in the same role, so a call written for ``optax.lars`` is accepted
  with no argument silently reinterpreted. It is not the same optimizer:

  * the ratio: ``optax.lars`` uses :math:`c\lVert w\rVert / \lVert g +
    \lambda w\rVert`, LARC :math:`c\lVert w\rVert / (\lVert g\rVert +
    \lambda\lVert w\rVert + \epsilon)` (apex, timm);
  * the clip: ``optax.lars`` never clips; with ``clip=True`` no layer's rate
    exceeds the global one;
  * ``eps``: ``optax.lars`` defaults to 0, LARC to 1e-8 (timm);
  * the order: ``optax.lars`` applies the learning rate before its momentum,
    LARC after it (PyTorch-style momentum, as apex and timm), which differs
    whenever the learning rate changes.

  ``trust_coefficient`` defaults to timm ``Lars``'s 0.001; apex uses 0.02.

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
    layer_axes: Axes of stacked layers, as in
      :func:`optax_lambc.scale_by_clipped_trust_ratio`.
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
  _layers.check_number('momentum', momentum, upper=1.0)
  return optax.chain(
      scale_by_larc_trust_ratio(
          learning_rate, weight_decay, trust_coefficient, eps, clip=clip,
          weight_decay_mask=weight_decay_mask,
          trust_ratio_mask=trust_ratio_mask, layer_axes=layer_axes,
          axis_name=axis_name),
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale_by_learning_rate(learning_rate),
  )
