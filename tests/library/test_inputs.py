"""No call is silently misread: drop-in signatures, bad input, gradients, NaNs.

Every bad input listed in the README's "Bad input" table is tried here, and the
error is checked to name the argument (and the pytree path where there is one)
and to be raised at build or at ``init``, before any update.
"""

import functools
import inspect
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lambc
from helpers import make_tree, run_lockstep
from seeds import stable_seed
import reference_numpy as ref

PARAMS = {'enc': {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)},
          'head': jnp.full((2, 2), 0.5)}


def _grads(params):
  return jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)


# --- Drop-in signatures -----------------------------------------------------


def test_optax_lamb_positional_call_means_the_same():
  mask = {'enc': {'kernel': True, 'bias': False}, 'head': True}
  args = (1e-2, 0.8, 0.99, 1e-5, 1e-9, 0.1, mask)
  ours = optax_lambc.lambc(*args, max_trust_ratio=None)
  theirs = optax.lamb(*args)
  params = PARAMS
  s1, s2 = ours.init(params), theirs.init(params)
  for _ in range(3):
    u1, s1 = ours.update(_grads(params), s1, params)
    u2, s2 = theirs.update(_grads(params), s2, params)
    jax.tree.map(np.testing.assert_array_equal, u1, u2)
    params = optax.apply_updates(params, u2)


def test_lambc_positional_parameters_are_optax_lambs():
  ours = list(inspect.signature(optax_lambc.lambc).parameters.values())
  theirs = list(inspect.signature(optax.lamb).parameters)
  positional = [p.name for p in ours
                if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
  assert positional == theirs
  with pytest.raises(TypeError):  # nothing LAMBC adds can be positional
    optax_lambc.lambc(1e-2, 0.9, 0.999, 1e-6, 0.0, 0.0, None, 0.0)


def test_larc_positional_parameters_are_optax_lars():
  ours = [p.name for p in
          inspect.signature(optax_lambc.larc).parameters.values()
          if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
  assert ours == list(inspect.signature(optax.lars).parameters)


def test_optax_masked_equals_mask_argument():
  tree = jax.tree.map(jnp.asarray, make_tree(2))
  mask = optax_lambc.exclude_bias_and_norm
  a = optax_lambc.scale_by_clipped_trust_ratio(0.1, 1.0, mask=mask)
  b = optax.masked(optax_lambc.scale_by_clipped_trust_ratio(0.1, 1.0), mask)
  sa, sb = a.init(tree), b.init(tree)
  for t in range(3):
    g = jax.tree.map(lambda p, t=t: jnp.sin(p + t) * 3.0, tree)
    ua, sa = a.update(g, sa, tree)
    ub, sb = b.update(g, sb, tree)
    jax.tree.map(np.testing.assert_array_equal, ua, ub)
    for x, y in zip(optax_lambc.trust_ratio_stats(sa),
                    optax_lambc.trust_ratio_stats(sb), strict=True):
      jax.tree.map(np.testing.assert_array_equal, x, y)


# --- Bad input: build time --------------------------------------------------

BUILD_ERRORS = [
    (lambda: optax_lambc.lambc(1e-2, max_trust_ratio=True), TypeError,
     'max_trust_ratio.*bool'),
    (lambda: optax_lambc.lambc(1e-2, min_trust_ratio=False), TypeError,
     'min_trust_ratio.*bool'),
    (lambda: optax_lambc.lambc(1e-2, max_trust_ratio={'enc': True}),
     TypeError, r'max_trust_ratio\[enc\].*bool'),
    (lambda: optax_lambc.lambc(1e-2, min_trust_ratio={'enc': 2.0},
                               max_trust_ratio={'enc': 1.0}), ValueError,
     "must not exceed.*'enc'"),
    (lambda: optax_lambc.lambc(1e-2, min_trust_ratio={'enc': 2.0},
                               max_trust_ratio=1.0), ValueError,
     "must not exceed.*'enc'"),
    (lambda: optax_lambc.lambc(1e-2, min_trust_ratio=0.5,
                               max_trust_ratio={'enc': {'kernel': 0.2}}),
     ValueError, "must not exceed.*'enc/kernel'"),
    (lambda: optax_lambc.lambc(1e-2, min_trust_ratio={'a': np.array([0.5, 2])},
                               max_trust_ratio={'a': np.array([1.0, 1.0])}),
     ValueError, 'must not exceed'),
    (lambda: optax_lambc.lambc(1e-2, trust_coefficient=0.0), ValueError,
     'trust_coefficient.*> 0'),
    (lambda: optax_lambc.scale_by_clipped_trust_ratio(trust_coefficient=0),
     ValueError, 'trust_coefficient'),
    (lambda: optax_lambc.larc(0.1, trust_coefficient=0.0), ValueError,
     'trust_coefficient'),
    (lambda: optax_lambc.scale_by_larc_trust_ratio(-0.1), ValueError,
     'learning_rate'),
    (lambda: optax_lambc.larc(-0.1), ValueError, 'learning_rate'),
    (lambda: optax_lambc.running_stat_bounds(n_std=None), ValueError,
     'n_std'),
    (lambda: optax_lambc.running_stat_bounds(n_std=True), TypeError,
     'n_std'),
    (lambda: optax_lambc.dynamic_bounds(gamma=True), TypeError, 'gamma'),
    (lambda: optax_lambc.lambc(1e-2, max_trust_ratio={
        'enc': optax_lambc.dynamic_bounds()}), TypeError, 'BoundPolicy'),
]


@pytest.mark.parametrize('build,error,match', BUILD_ERRORS,
                         ids=[m for _, _, m in BUILD_ERRORS])
def test_build_errors(build, error, match):
  with pytest.raises(error, match=match):
    build()


# --- Bad input: init time (naming the argument and the pytree path) ---------

INIT_ERRORS = [
    (dict(mask={'enc': {'kernel': True, 'bais': False}, 'head': True}),
     "`mask` entry 'enc/bais'"),
    (dict(trust_ratio_mask={'enc': True, 'haed': True}),
     "`trust_ratio_mask` entry 'haed'"),
    (dict(trust_ratio_mask={'enc': True}), "`trust_ratio_mask` has no entry.*"
     "'head'"),
    (dict(max_trust_ratio={'enc': 1.0, 'head': 1.0, 'extra': 2.0}),
     "`max_trust_ratio` entry 'extra'"),
    (dict(min_trust_ratio={'enc': 0.1, 'haed': 0.1}),
     "`min_trust_ratio` entry 'haed'"),
    (dict(max_trust_ratio={'enc': 1.0, 'head': 1.0, 'extra': 2.0},
          trust_ratio_mask=optax_lambc.exclude_bias_and_norm),
     "`max_trust_ratio` entry 'extra'"),
    (dict(layer_axes={'enc': 0, 'head': 2}), "`layer_axes` at 'head'.*out "
     'of range'),
    (dict(layer_axes={'enc': {'kernel': (0, -2), 'bias': None},
                      'head': None}), "`layer_axes` at 'enc/kernel' repeats"),
    (dict(layer_axes={'enc': 0, 'hd': None}), "`layer_axes` entry 'hd'"),
    (dict(layer_axes={'enc': 0, 'head': 'x'}), "`layer_axes` at 'head'"),
    (dict(layer_axes={'enc': {'kernel': 0, 'bias': None}, 'head': None},
          max_trust_ratio={'enc': {'kernel': np.ones(2), 'bias': 1.0},
                           'head': 1.0}),
     "`max_trust_ratio` at 'enc/kernel' has shape \\(2,\\).*\\(3,\\)"),
]


@pytest.mark.parametrize('kwargs,match', INIT_ERRORS,
                         ids=[m for _, m in INIT_ERRORS])
def test_init_errors_name_argument_and_path(kwargs, match):
  opt = optax_lambc.lambc(1e-2, **kwargs)  # building succeeds ...
  with pytest.raises((ValueError, TypeError), match=match):
    opt.init(PARAMS)  # ... and init, not the first update, fails


@pytest.mark.parametrize('kwargs,match', [
    (dict(weight_decay_mask={'enc': True, 'haed': True}),
     "`weight_decay_mask` entry 'haed'"),
    (dict(trust_ratio_mask={'enc': True, 'haed': True}),
     "`trust_ratio_mask` entry 'haed'"),
    (dict(layer_axes={'enc': 5, 'head': None}), "`layer_axes` at 'enc/"),
])
def test_larc_init_errors(kwargs, match):
  opt = optax_lambc.larc(0.1, **kwargs)
  with pytest.raises(ValueError, match=match):
    opt.init(PARAMS)


def test_leaf_shape_mismatch_names_the_path():
  bad = dict(_grads(PARAMS), head=jnp.ones((2, 3)))
  # In lambc, Adam's moments meet the mismatch first (as in optax.lamb).
  opt = optax_lambc.lambc(1e-2)
  with pytest.raises(TypeError, match='incompatible shapes'):
    opt.update(bad, opt.init(PARAMS), PARAMS)
  t = optax_lambc.scale_by_clipped_trust_ratio()
  with pytest.raises(ValueError, match=r"updates leaf 'head' has shape "
                     r'\(2, 3\) but the params leaf has shape \(2, 2\)'):
    t.update(bad, t.init(PARAMS), PARAMS)


# --- Run-time rules ---------------------------------------------------------


def test_negative_schedule_bound_never_flips_the_update():
  # f(w) = |w|^2 / 2; a bound schedule that goes negative must not climb.
  params = {'w': jnp.array([3.0, -4.0])}
  opt = optax_lambc.lambc(0.1, max_trust_ratio=lambda count: -0.5,
                          min_trust_ratio=lambda count: -1.0)
  state = opt.init(params)
  for _ in range(3):
    updates, state = opt.update(params, state, params)
    new = optax.apply_updates(params, updates)
    assert float(jnp.sum(new['w'] ** 2)) <= float(jnp.sum(params['w'] ** 2))
    params = new
  stats = optax_lambc.trust_ratio_stats(state)
  assert float(stats.by_path('applied')['w']) == 0.0
  assert float(stats.by_path('upper')['w']) == 0.0
  assert float(stats.by_path('lower')['w']) == 0.0


def test_bounds_recorded_at_init():
  # What users see on the first mini-steps of optax.MultiSteps.
  params = {'w': jnp.ones((2, 2))}
  opt = optax.MultiSteps(optax_lambc.lambc(
      1e-2, min_trust_ratio=0.1, max_trust_ratio=optax.linear_schedule(
          4.0, 1.0, 10)), every_k_schedule=4)
  stats = optax_lambc.trust_ratio_stats(opt.init(params))
  assert float(stats.by_path('upper')['w']) == 4.0
  assert float(stats.by_path('lower')['w']) == pytest.approx(0.1)
  policy = optax_lambc.dynamic_bounds(1.0, gamma=0.5)
  opt = optax_lambc.lambc(1e-2, max_trust_ratio=policy)
  stats = optax_lambc.trust_ratio_stats(opt.init(params))
  # 1 + 1/(0.5*1):
  assert float(stats.by_path('upper')['w']) == pytest.approx(3.0)


def test_larc_weight_decay_schedule_matches_reference():
  tree = make_tree(5)
  leaves = jax.tree.leaves(tree)
  wd = optax.linear_schedule(1e-2, 1e-3, 50)

  class Ref:
    step = staticmethod(ref.larc(
        leaves, 0.05, weight_decay=lambda c: 1e-2 + (1e-3 - 1e-2) * min(
            c, 50) / 50, trust_coefficient=0.02))

  run_lockstep(optax_lambc.larc(0.05, wd, trust_coefficient=0.02), Ref(),
               tree, steps=60, seed=5)


# --- Differentiable ---------------------------------------------------------


def test_gradients_through_lambc_are_finite_at_zero_norms():
  # A zero-initialised leaf (|w| = 0) and a leaf with a zero gradient (|u| = 0,
  # no weight decay): hyper-gradients of a meta-loss must stay finite.
  params = {'zero_w': jnp.zeros((3, 3)), 'zero_g': jnp.ones((2, 2)),
            'normal': jnp.arange(4.0).reshape(2, 2) + 1.0}
  grads = {'zero_w': jnp.ones((3, 3)), 'zero_g': jnp.zeros((2, 2)),
           'normal': jnp.ones((2, 2))}

  def meta_loss(params, grads, lr):
    # eps_root > 0 keeps Adam's own sqrt(v) differentiable at v = 0 (optax's
    # advice for meta-learning); the trust ratio must then add no NaN.
    opt = optax_lambc.lambc(lr, eps_root=1e-8, max_trust_ratio=2.0)
    updates, _ = opt.update(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    return sum(jnp.sum(x ** 2) for x in jax.tree.leaves(new))

  d_params, d_grads, d_lr = jax.jit(jax.grad(meta_loss, argnums=(0, 1, 2)))(
      params, grads, 0.1)
  for leaf in jax.tree.leaves((d_params, d_grads, d_lr)):
    assert np.all(np.isfinite(np.asarray(leaf)))
  # And the finite value is the right one where the norm is not zero.
  eps = 1e-3
  bumped = dict(params, normal=params['normal'].at[0, 0].add(eps))
  loss = jax.jit(meta_loss)
  fd = (loss(bumped, grads, 0.1) - loss(params, grads, 0.1)) / eps
  assert float(d_params['normal'][0, 0]) == pytest.approx(float(fd), rel=1e-2)


def test_leaf_norm_gradient_is_zero_at_zero():
  g = jax.grad(lambda x: optax_lambc.leaf_norm(x))(jnp.zeros(3))
  np.testing.assert_array_equal(np.asarray(g), 0.0)
  g = jax.grad(lambda x: jnp.sum(optax_lambc.leaf_norm(x, 0)))(
      jnp.array([[0.0, 0.0], [3.0, 4.0]]))
  np.testing.assert_allclose(np.asarray(g), [[0, 0], [0.6, 0.8]])


# --- NaN under apply_if_finite ----------------------------------------------


def test_nonfinite_leaves_name_the_layer_of_a_skipped_step():
  params = {'enc': jnp.ones((2, 2)), 'head': jnp.ones(2)}
  opt = optax.apply_if_finite(optax_lambc.lambc(1e-2), max_consecutive_errors=3)
  state = opt.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state,
            optax_lambc.nonfinite_leaves(grads))

  grads = {'enc': jnp.array([[1.0, jnp.nan], [0.0, 1.0]]), 'head': jnp.ones(2)}
  new, state, bad = step(params, state, grads)
  jax.tree.map(np.testing.assert_array_equal, new, params)  # step skipped
  assert {k: bool(v) for k, v in bad.items()} == {'enc': True, 'head': False}
  assert int(state.notfinite_count) == 1


# --- Deterministic seeds ----------------------------------------------------


def test_stable_seed_is_the_same_in_every_process():
  code = ('import sys; sys.path.insert(0, "tests"); from seeds import '
          'stable_seed; print(stable_seed(0.0, None, 1e-2))')
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  outs = {subprocess.run([sys.executable, '-c', code], cwd=root, check=True,
                         capture_output=True, text=True,
                         env=dict(os.environ, PYTHONHASHSEED=h)).stdout
          for h in ('1', '2', '3')}
  assert outs == {f'{stable_seed(0.0, None, 1e-2)}\n'}


def test_nan_bound_in_tree_is_rejected():
  with pytest.raises(ValueError, match=r'max_trust_ratio\[enc\].*NaN'):
    optax_lambc.lambc(1e-2, max_trust_ratio={'enc': math.nan})


# --- Donation ---------------------------------------------------------------


@pytest.mark.parametrize('build', [
    lambda: optax_lambc.lambc(1e-2),
    lambda: optax_lambc.lambc(1e-2, max_trust_ratio=None, min_trust_ratio=0.0),
    lambda: optax_lambc.lambc(
        1e-2, max_trust_ratio=optax_lambc.running_stat_bounds()),
    lambda: optax_lambc.lambc(1e-2, max_trust_ratio=optax_lambc.dynamic_bounds(
    ), trust_ratio_mask=optax_lambc.exclude_bias_and_norm),
    lambda: optax.apply_if_finite(optax_lambc.lambc(1e-2), 3),
    lambda: optax_lambc.larc(0.1),
], ids=['lambc', 'lamb', 'running', 'dynamic_masked', 'apply_if_finite',
        'larc'])
def test_fresh_state_can_be_donated(build):
  # No two leaves of a fresh state may share a buffer: a training step that
  # donates the optimizer state (as every large-model step does) would fail.
  opt = build()
  params = jax.tree.map(jnp.copy, PARAMS)
  state = opt.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = step(params, state, _grads(params))
  params, state = step(params, state, _grads(params))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_a_string_bound_fails_at_build_naming_it():
  with pytest.raises(TypeError, match="`max_trust_ratio` must be a number, "
                     "got the string '1.0'"):
    optax_lambc.lambc(1e-2, max_trust_ratio='1.0')
