"""LARC: LARS whose local learning rate is clipped at the global one."""

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_lambc import _validation
from optax_lambc import alias
from optax_lambc import trust_ratio as tr


def scale_by_larc_trust_ratio(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: Any = 0.0,
    trust_coefficient: Any = 0.001,
    clip: bool = True,
    eps: Any = 1e-8,
    weight_decay_mask: Any = None,
    trust_ratio_mask: Any = None,
    axis_name: Any = None,
) -> optax.GradientTransformation:
  r"""Adds weight decay, then scales each layer by LARC's local rate.

  Per adapted layer with weight :math:`w` and gradient :math:`g`:

  .. math::
    \ell = \frac{c\,\lVert w\rVert}{\lVert g\rVert + \lambda\lVert w\rVert
    + \epsilon},\qquad
    s = \begin{cases}\min(\ell/\eta_t, 1) & \text{clip}\\ \ell & \text{no
    clip}\end{cases},\qquad u = s\,(g + \lambda w),

  with :math:`\ell = 1` where a norm is 0. Multiplied later by the learning
  rate :math:`\eta_t`, the effective per-layer rate is
  :math:`\min(\ell, \eta_t)` with clipping and :math:`\eta_t\ell` without:
  apex ``LARC`` and timm ``Lars(trust_clip=True)``. Masked layers get
  :math:`s=1`. The state is a :class:`ScaleByClippedTrustRatioState` whose
  raw ratio is :math:`\ell/\eta_t` (clip) or :math:`\ell` and whose applied
  ratio is :math:`s`, so :func:`optax_lambc.trust_ratio_stats` reads it.

  Args:
    learning_rate: The global rate :math:`\eta_t` (number or schedule) that the
      clip is relative to; it must equal the one applied after momentum.
    weight_decay: :math:`\lambda`.
    trust_coefficient: :math:`c`.
    clip: Clip the local rate at the global one (LARC) or not (LARS).
    eps: :math:`\epsilon`.
    weight_decay_mask: Bool tree or callable; False leaves get no decay.
    trust_ratio_mask: Bool tree or callable; False leaves get :math:`s = 1`.
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
  _validation.check_number('trust_coefficient', trust_coefficient)
  _validation.check_number('eps', eps)
  _validation.check_number('weight_decay', weight_decay)

  def init_fn(params):
    adapt = tr.resolve_mask(trust_ratio_mask, params, 'trust_ratio_mask')
    return tr.initial_state(tr.ratio_template(params, adapt))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(_validation.NO_PARAMS_MSG)
    _validation.check_updates_and_params(updates, params)
    adapt = tr.resolve_mask(trust_ratio_mask, params, 'trust_ratio_mask')
    decay = tr.resolve_mask(weight_decay_mask, params, 'weight_decay_mask')
    lr = (learning_rate(state.count) if callable(learning_rate)
          else learning_rate)
    flat_g, treedef = jax.tree.flatten(updates)
    flat_p = treedef.flatten_up_to(params)
    raw_l, app_l, out = [], [], []
    for g, p, m, d in zip(flat_g, flat_p, treedef.flatten_up_to(adapt),
                          treedef.flatten_up_to(decay), strict=True):
      wd = weight_decay if d else 0.0
      u = g + wd * p if d else g
      if not m:
        out.append(u)
        continue
      w_norm, g_norm = tr.layer_norm(p, axis_name), tr.layer_norm(g, axis_name)
      local = trust_coefficient * w_norm / (g_norm + wd * w_norm + eps)
      local = jnp.where((w_norm == 0) | (g_norm == 0), 1, local)
      local = jnp.where(jnp.isfinite(g_norm), local, jnp.nan)
      raw = (local / lr if clip else local).astype(w_norm.dtype)
      scale = jnp.minimum(raw, 1) if clip else raw
      raw_l.append(raw)
      app_l.append(scale)
      out.append((u * scale).astype(u.dtype))
    t_def = jax.tree.structure(tr.ratio_template(params, adapt))
    upper = jax.tree.map(lambda s: jnp.full_like(s, 1 if clip else math.inf),
                         state.upper)
    return jax.tree.unflatten(treedef, out), tr.ScaleByClippedTrustRatioState(
        count=optax.safe_increment(state.count),
        raw_ratio=jax.tree.unflatten(t_def, raw_l),
        applied_ratio=jax.tree.unflatten(t_def, app_l),
        lower=state.lower, upper=upper, policy_state=state.policy_state)

  return optax.GradientTransformation(init_fn, update_fn)


def larc(
    learning_rate: optax.ScalarOrSchedule,
    momentum: Any = 0.9,
    weight_decay: Any = 0.0,
    trust_coefficient: Any = 0.001,
    clip: bool = True,
    eps: Any = 1e-8,
    nesterov: bool = False,
    weight_decay_mask: Any = None,
    trust_ratio_mask: Any = None,
    *,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""LARC: momentum SGD with LARS local rates clipped at the global rate.

  ``chain(`` :func:`scale_by_larc_trust_ratio` ``, trace(momentum, nesterov),
  scale_by_learning_rate)``: the gradient plus weight decay is scaled by
  :math:`\min(\ell/\eta_t, 1)` (``clip=True``) or :math:`\ell`, then goes
  through PyTorch-style momentum (no dampening) and the learning rate. The clip
  follows a learning-rate schedule step by step.

  How it differs from ``optax.lars``: ``optax.lars`` takes the ratio on
  :math:`\lVert g + \lambda w\rVert` and never clips; LARC takes it on
  :math:`\lVert g\rVert + \lambda\lVert w\rVert` (apex, timm) and, with
  ``clip=True``, never lets a layer's rate exceed the global one. Defaults
  follow timm's ``Lars`` (``trust_coefficient=0.001``, ``eps=1e-8``); apex uses
  ``trust_coefficient=0.02``.

  Args:
    learning_rate: Global rate :math:`\eta_t`, number or schedule.
    momentum: Momentum decay in [0, 1).
    weight_decay: :math:`\lambda`, added to the gradient before scaling.
    trust_coefficient: LARS's :math:`c`.
    clip: Clip the local rate at the global one (True: LARC; False: LARS).
    eps: Added to the ratio's denominator.
    nesterov: Nesterov momentum.
    weight_decay_mask: Bool tree or callable; False leaves get no decay.
    trust_ratio_mask: Bool tree or callable; False leaves are not adapted.
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
  _validation.check_number('learning_rate', learning_rate)
  return alias.with_input_checks(optax.chain(
      scale_by_larc_trust_ratio(
          learning_rate, weight_decay, trust_coefficient, clip, eps,
          weight_decay_mask, trust_ratio_mask, axis_name),
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale_by_learning_rate(learning_rate),
  ))
