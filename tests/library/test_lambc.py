"""lambc against the NumPy reference, optax.lamb, and optax's wrappers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lambc
from helpers import make_tree, matrix, run_lockstep
from seeds import stable_seed
import reference_numpy as ref

BOUNDS = [(0.0, None), (0.0, 1.0), (0.0, 3.0), (0.0, 10.0), (0.1, 1.0)]


def ratio_checker(rtol, seen):
  """on_step hook: telemetry equals the reference's ratios; records clips."""

  def check(state, reference, step):
    del step
    stats = optax_lambc.trust_ratio_stats(state)
    raw = np.array([float(v) for v in stats.by_path('raw').values()])
    applied = np.array([float(v) for v in stats.by_path('applied').values()])
    # Rounding in the Adam step is magnified by each layer's condition number
    # where it nearly cancels the decay (see reference_numpy.Lambc.cond).
    tol = rtol * 10 * np.maximum(1.0, np.asarray(reference.cond))
    for got, want in ((raw, reference.raw), (applied, reference.applied)):
      bad = ~(np.abs(got - want) <= tol * np.abs(want)) & ~(
          np.isnan(got) & np.isnan(np.asarray(want, float)))
      assert not bad.any(), (got[bad], np.asarray(want)[bad], tol[bad])
    seen['upper'] = seen.get('upper', 0) + float(stats.clipped_upper_fraction)
    seen['lower'] = seen.get('lower', 0) + float(stats.clipped_lower_fraction)

  return check


@pytest.mark.parametrize('bounds,weight_decay,jit,dtype,rtol', matrix(
    [(b, wd) for wd in (1e-2, 0.0) for b in BOUNDS], also=2))
def test_matches_numpy_reference(bounds, weight_decay, jit, dtype, rtol):
  lo, hi = bounds
  seed = stable_seed(lo, hi, weight_decay)
  with jax.enable_x64(dtype == np.float64):
    tree = make_tree(seed, dtype)
    seen = {}
    run_lockstep(
        optax_lambc.lambc(1e-2, weight_decay=weight_decay, min_trust_ratio=lo,
                          max_trust_ratio=hi),
        ref.Lambc(jax.tree.leaves(tree), 1e-2, weight_decay=weight_decay,
                  min_trust_ratio=lo, max_trust_ratio=hi),
        tree, steps=50, seed=seed, jit=jit, rtol=rtol,
        on_step=ratio_checker(rtol, seen))
  if hi is not None:
    assert seen['upper'] > 0, 'the upper bound never triggered'
  if lo > 0:
    assert seen['lower'] > 0, 'the lower bound never triggered'


@pytest.mark.parametrize('case', [
    'masks', 'schedule', 'per_layer', 'no_bias_correction', 'phi_and_tc',
    'wd_schedule',
])
def test_matches_numpy_reference_options(case):
  tree = make_tree(7)
  leaves = jax.tree.leaves(tree)
  names = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(tree)[0]]
  kw, rkw = {}, {}
  if case == 'masks':
    kw = dict(weight_decay=1e-2,
              mask=optax_lambc.exclude_bias_and_norm,
              trust_ratio_mask=optax_lambc.exclude_bias_and_norm)
    mask = [x.ndim > 1 for x in leaves]
    rkw = dict(weight_decay=1e-2, weight_decay_mask=mask,
               trust_ratio_mask=mask)
  elif case == 'schedule':
    sched = optax.linear_schedule(10.0, 1.0, 50)
    kw = dict(max_trust_ratio=sched, min_trust_ratio=0.05)
    rkw = dict(max_trust_ratio=lambda c: 10.0 + (1.0 - 10.0) * min(c, 50) / 50,
               min_trust_ratio=0.05)
  elif case == 'per_layer':
    per = {'conv': 3.0, 'dense': {'kernel': 1.0, 'bias': 10.0},
           'scalar': math.inf, 'tiny': 0.5, 'zero_init': 2.0}
    kw = dict(max_trust_ratio=per,
              min_trust_ratio={'conv': 0.0, 'dense': 0.1, 'scalar': 0.0,
                               'tiny': 0.2, 'zero_init': 0.0})
    hi = {"['conv']": 3.0, "['dense']['kernel']": 1.0,
          "['dense']['bias']": 10.0, "['scalar']": math.inf,
          "['tiny']": 0.5, "['zero_init']": 2.0}
    lo = {"['conv']": 0.0, "['dense']": 0.1, "['scalar']": 0.0,
          "['tiny']": 0.2, "['zero_init']": 0.0}
    rkw = dict(
        max_trust_ratio=[next(v for k, v in hi.items() if n.startswith(k))
                         for n in names],
        min_trust_ratio=[next(v for k, v in lo.items() if n.startswith(k))
                         for n in names])
  elif case == 'no_bias_correction':
    kw = rkw = dict(bias_correction=False, weight_decay=1e-2)
  elif case == 'phi_and_tc':
    kw = rkw = dict(trust_coefficient=0.5, weight_norm_bounds=(0.01, 10.0),
                    max_trust_ratio=3.0)
  elif case == 'wd_schedule':
    kw = dict(weight_decay=optax.constant_schedule(0.05))
    rkw = dict(weight_decay=lambda c: 0.05)
  run_lockstep(optax_lambc.lambc(1e-2, **kw),
               ref.Lambc(leaves, 1e-2, **rkw), tree, steps=50, seed=7)


def test_matches_authors_unbiased_update_by_hand():
  # One step of the authors' Lambc (no bias correction), computed by hand:
  # m = 0.1 g, v = 0.001 g^2, r = m / (sqrt(v) + eps) = 0.1/sqrt(0.001) sign(g).
  g, w = np.array([1.0, -1.0], np.float32), np.array([0.3, 0.4], np.float32)
  opt = optax_lambc.lambc(1.0, eps=0.0, bias_correction=False)
  up, _ = opt.update(jnp.asarray(g), opt.init(jnp.asarray(w)), jnp.asarray(w))
  r = 0.1 / np.sqrt(0.001) * np.sign(g)
  ratio = min(np.linalg.norm(w) / np.linalg.norm(r), 1.0)
  np.testing.assert_allclose(np.asarray(up), -ratio * r, rtol=1e-6)


@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
@pytest.mark.parametrize('weight_decay', [0.0, 1e-2])
def test_without_upper_bound_equals_optax_lamb(jit, weight_decay):
  tree = jax.tree.map(jnp.asarray, make_tree(3))
  ours = optax_lambc.lambc(1e-2, weight_decay=weight_decay,
                           max_trust_ratio=None)
  theirs = optax.lamb(1e-2, weight_decay=weight_decay)
  s_ours, s_theirs = ours.init(tree), theirs.init(tree)
  up_ours = jax.jit(ours.update) if jit else ours.update
  up_theirs = jax.jit(theirs.update) if jit else theirs.update
  rng = np.random.default_rng(0)  # NumPy: no per-shape sampler to compile
  params = tree
  for _ in range(50):
    grads = jax.tree.map(lambda p: jnp.asarray(
        rng.standard_normal(p.shape), p.dtype), params)
    u1, s_ours = up_ours(grads, s_ours, params)
    u2, s_theirs = up_theirs(grads, s_theirs, params)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
      # The norms are summed in another order (row sums, then one sum per
      # group of same-shaped leaves): the ratio moves by a few ulps, with or
      # without jit.
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6)
    params = optax.apply_updates(params, u2)


def test_inject_hyperparams_numeric_and_scheduled():
  params = jax.tree.map(jnp.asarray, make_tree(1))
  opt = optax.inject_hyperparams(optax_lambc.lambc)(
      learning_rate=optax.linear_schedule(1e-2, 1e-3, 10),
      max_trust_ratio=1.0, weight_decay=1e-2)
  state = opt.init(params)
  assert float(state.hyperparams['max_trust_ratio']) == 1.0
  grads = jax.tree.map(jnp.ones_like, params)
  step = jax.jit(opt.update)
  updates, state = step(grads, state, params)
  stats = optax_lambc.trust_ratio_stats(state)
  assert max(float(v) for v in stats.by_path('applied').values()) <= 1.0
  # Change the bound by hand between steps, as inject_hyperparams allows.
  state.hyperparams['max_trust_ratio'] = jnp.asarray(0.25)
  _, state = step(grads, state, params)
  stats = optax_lambc.trust_ratio_stats(state)
  assert max(float(v) for v in stats.by_path('applied').values()) <= 0.25
  assert float(stats.clipped_upper_fraction) > 0


def test_inject_hyperparams_equals_plain():
  tree = make_tree(2)
  leaves = jax.tree.leaves(tree)
  opt = optax.inject_hyperparams(optax_lambc.lambc)(
      learning_rate=1e-2, max_trust_ratio=3.0, min_trust_ratio=0.1)
  run_lockstep(opt, ref.Lambc(leaves, 1e-2, max_trust_ratio=3.0,
                              min_trust_ratio=0.1), tree, steps=30, seed=2)


def test_masked_and_multisteps():
  params = jax.tree.map(jnp.asarray, make_tree(4))
  mask = jax.tree.map(lambda p: p.ndim > 1, params)
  opt = optax.MultiSteps(optax.masked(optax_lambc.lambc(1e-2), mask),
                         every_k_schedule=2)
  state = opt.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  u1, state = jax.jit(opt.update)(grads, state, params)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u1))
  u2, state = jax.jit(opt.update)(grads, state, params)
  # optax.masked passes masked-out leaves through unchanged (the mean grad);
  # the others went through lambc, so they are scaled by -lr * ratio.
  for u, g, m in zip(jax.tree.leaves(u2), jax.tree.leaves(grads),
                     jax.tree.leaves(mask), strict=True):
    assert bool(jnp.all(u == g)) != m
  stats = optax_lambc.trust_ratio_stats(state)
  assert set(stats.by_path('raw')) == {'conv/kernel', 'dense/kernel', 'tiny',
                            'zero_init'}


def test_apply_if_finite_skips_bad_step_and_telemetry_shows_nan():
  params = {'w': jnp.ones((3, 3)), 'b': jnp.ones(3)}
  opt = optax.apply_if_finite(optax_lambc.lambc(1e-2), max_consecutive_errors=3)
  state = opt.init(params)
  bad = {'w': jnp.full((3, 3), jnp.nan), 'b': jnp.ones(3)}
  updates, state = jax.jit(opt.update)(bad, state, params)
  new = optax.apply_updates(params, updates)
  assert all(bool(jnp.all(a == b)) for a, b in
             zip(jax.tree.leaves(new), jax.tree.leaves(params), strict=True))
  assert int(state.notfinite_count) == 1
  # The inner state is not advanced on a bad step, so look at the raw chain.
  inner = optax_lambc.lambc(1e-2)
  _, s = inner.update(bad, inner.init(params), params)
  stats = optax_lambc.trust_ratio_stats(s)
  assert np.isnan(float(stats.by_path('raw')['w']))
  assert np.isfinite(float(stats.by_path('raw')['b']))


def test_inf_gradient_gives_nan_update_not_silent_zero():
  params = {'w': jnp.ones(4)}
  t = optax_lambc.scale_by_clipped_trust_ratio()
  u, s = t.update({'w': jnp.array([jnp.inf, 0, 0, 0])}, t.init(params), params)
  assert bool(jnp.all(jnp.isnan(u['w'])))
  assert np.isnan(float(optax_lambc.trust_ratio_stats(s).by_path('raw')['w']))


def test_zero_norms_give_ratio_one_then_clipped():
  params = {'zero': jnp.zeros(3), 'w': jnp.ones(3)}
  t = optax_lambc.scale_by_clipped_trust_ratio(min_trust_ratio=2.0,
                                               max_trust_ratio=5.0)
  u, s = t.update({'zero': jnp.ones(3), 'w': jnp.zeros(3)}, t.init(params),
                  params)
  stats = optax_lambc.trust_ratio_stats(s)
  assert float(stats.by_path('raw')['zero']) == 1.0
  assert float(stats.by_path('raw')['w']) == 1.0
  assert float(stats.by_path('applied')['zero']) == 2.0
  np.testing.assert_array_equal(np.asarray(u['zero']), 2.0)


def test_flax_train_state():
  from flax.training import train_state  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  model = nn.Dense(3)
  params = model.init(jax.random.key(0), jnp.ones((1, 4)))['params']
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=params,
      tx=optax_lambc.lambc(1e-2, weight_decay=1e-4,
                           trust_ratio_mask=optax_lambc.exclude_bias_and_norm))

  @jax.jit
  def step(state, x, y):
    def loss(p):
      return jnp.mean((state.apply_fn({'params': p}, x) - y) ** 2)
    value, grads = jax.value_and_grad(loss)(state.params)
    return state.apply_gradients(grads=grads), value

  x, y = jnp.ones((8, 4)), jnp.zeros((8, 3))
  losses = []
  for _ in range(20):
    state, value = step(state, x, y)
    losses.append(float(value))
  assert losses[-1] < losses[0] * 0.5
  stats = optax_lambc.trust_ratio_stats(state.opt_state)
  assert set(stats.by_path('raw')) == {'kernel'}


def test_flax_nnx_optimizer():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax_lambc.lambc(1e-1), wrt=nnx.Param)
  x, y = jnp.ones((8, 4)), jnp.zeros((8, 3))

  def loss(m):
    return jnp.mean((m(x) - y) ** 2)

  first = float(loss(model))
  for _ in range(10):
    optimizer.update(model, nnx.grad(loss)(model))
  assert float(loss(model)) < first * 0.5
  stats = optax_lambc.trust_ratio_stats(optimizer.opt_state)
  assert set(stats.by_path('raw')) == {'bias', 'kernel'}
