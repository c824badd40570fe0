"""Bound policies and LARC against the NumPy reference; state round trips."""

import doctest
import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lambc
from helpers import make_tree, matrix, run_lockstep
import reference_numpy as ref


def _policy_pair(kind, n_layers):
  if kind == 'dynamic':
    return (optax_lambc.dynamic_bounds(final=1.0, gamma=0.05),
            ref.DynamicBounds(1.0, 0.05))
  if kind == 'dynamic_schedule':
    # optax schedules compute in float32: use values exact in float32.
    sched = optax.piecewise_constant_schedule(3.0, {40: 0.5})
    return (optax_lambc.dynamic_bounds(final=sched, gamma=0.1),
            ref.DynamicBounds(lambda c: 3.0 if c < 40 else 1.5, 0.1))
  if kind == 'running':
    return (optax_lambc.running_stat_bounds(n_std=1.0, decay=0.9,
                                            warmup_steps=5),
            ref.RunningStatBounds(n_layers, 1.0, 0.9, 5))
  if kind == 'running_fixed':
    return (optax_lambc.running_stat_bounds(
        n_std=optax.constant_schedule(0.5), decay=0.8, warmup_steps=3,
        min_trust_ratio=0.01, max_trust_ratio=2.0),
            ref.RunningStatBounds(n_layers, lambda c: 0.5, 0.8, 3, 0.01, 2.0))
  raise ValueError(kind)


@pytest.mark.parametrize('kind,jit,dtype,rtol', matrix(
    ['running', 'dynamic', 'dynamic_schedule', 'running_fixed'], also=1))
def test_policies_match_numpy_reference(kind, jit, dtype, rtol):
  with jax.enable_x64(dtype == np.float64):
    tree = make_tree(11, dtype)
    leaves = jax.tree.leaves(tree)
    policy, ref_policy = _policy_pair(kind, len(leaves))
    seen = {'clipped': 0.0}

    def check(state, reference, step):
      stats = optax_lambc.trust_ratio_stats(state)
      lower = np.array([float(v) for v in stats.by_path('lower').values()])
      upper = np.array([float(v) for v in stats.by_path('upper').values()])
      applied = np.array([float(v) for v in stats.by_path('applied').values()])
      np.testing.assert_allclose(lower, reference.lower, rtol=rtol * 100,
                                 atol=rtol)
      np.testing.assert_allclose(upper, reference.upper, rtol=rtol * 100)
      assert np.all(np.isfinite(lower))
      if kind != 'running' or step >= 5:  # no fixed max: inf in warm-up
        assert np.all(np.isfinite(upper))
      assert np.all(lower <= applied * (1 + 1e-6))
      assert np.all(applied <= upper * (1 + 1e-6))
      seen['clipped'] += float(stats.clipped_lower_fraction +
                               stats.clipped_upper_fraction)

    run_lockstep(optax_lambc.lambc(1e-2, weight_decay=1e-2,
                                   max_trust_ratio=policy),
                 ref.Lambc(leaves, 1e-2, weight_decay=1e-2, policy=ref_policy),
                 tree, steps=50, seed=11, jit=jit, rtol=rtol, on_step=check)
  assert seen['clipped'] > 0, 'the policy never clipped'


def test_policy_per_layer_final_and_mask():
  tree = make_tree(12)
  leaves = jax.tree.leaves(tree)
  mask = optax_lambc.exclude_bias_and_norm(tree)
  final = jax.tree.map(lambda p: 0.5 if p.ndim > 2 else 2.0, tree)
  policy = optax_lambc.dynamic_bounds(final=final, gamma=0.1)
  adapted = [p for p, m in zip(leaves, jax.tree.leaves(mask), strict=True) if m]
  ref_policy = ref.DynamicBounds([0.5 if p.ndim > 2 else 2.0 for p in adapted],
                                 0.1)
  run_lockstep(
      optax_lambc.lambc(1e-2, max_trust_ratio=policy, trust_ratio_mask=mask),
      ref.Lambc(leaves, 1e-2, policy=ref_policy,
                trust_ratio_mask=jax.tree.leaves(mask)),
      tree, steps=50, seed=12)


def test_running_stat_state_survives_save_restore():
  tree = jax.tree.map(jnp.asarray, make_tree(5))
  opt = optax_lambc.lambc(1e-2, max_trust_ratio=optax_lambc.running_stat_bounds(
      n_std=2.0, decay=0.9, warmup_steps=3))
  step = jax.jit(lambda g, s, p: opt.update(g, s, p))
  state = opt.init(tree)
  params = tree

  def run(params, state, start, stop):
    for t in range(start, stop):
      g = jax.tree.map(lambda p, t=t: jnp.sin(p * (t + 1)) + 0.1, params)
      u, state = step(g, state, params)
      params = optax.apply_updates(params, u)
    return params, state

  params, state = run(params, state, 0, 10)
  # Round trip through NumPy (what any checkpointer does) and a fresh treedef.
  leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
  restored = jax.tree.unflatten(jax.tree.structure(opt.init(tree)),
                                [jnp.asarray(x) for x in leaves])
  p_a, s_a = run(params, state, 10, 20)
  p_b, s_b = run(params, restored, 10, 20)
  chex.assert_trees_all_equal((p_a, s_a), (p_b, s_b))
  inner = [s for s in jax.tree.leaves(
      s_a, is_leaf=lambda x: isinstance(x, optax_lambc.RunningStatBoundsState))
           if isinstance(s, optax_lambc.RunningStatBoundsState)]
  # One entry per layer, in the order the telemetry names them.
  i = optax_lambc.trust_ratio_stats(s_a).names.paths.index('dense/kernel')
  assert int(inner[0].count[i]) == 20


@pytest.mark.parametrize('kwargs,match', [
    (dict(n_std=0.0), 'n_std'), (dict(n_std=-1.0), 'n_std'),
    (dict(decay=1.0), 'decay'), (dict(decay=-0.5), 'decay'),
    (dict(warmup_steps=0), 'warmup_steps'),
    (dict(warmup_steps=1.5), 'warmup_steps'),
    (dict(min_trust_ratio=2.0, max_trust_ratio=1.0), 'must not exceed'),
])
def test_running_stat_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optax_lambc.running_stat_bounds(**kwargs)


@pytest.mark.parametrize('kwargs,match', [
    (dict(gamma=0.0), 'gamma'), (dict(gamma=-1.0), 'gamma'),
    (dict(final=-1.0), 'final'),
])
def test_dynamic_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optax_lambc.dynamic_bounds(**kwargs)


# --------------------------------------------------------------------------
# LARC.


@pytest.mark.parametrize('clip,nesterov,lr,jit,dtype,rtol', matrix([
    (True, True, 'schedule'), (True, False, 0.1), (False, False, 1.0)],
                                                                   also=1))
def test_larc_matches_numpy_reference(clip, nesterov, lr, jit, dtype, rtol):
  if lr == 'schedule':
    # optax schedules compute in float32: use values exact in float32.
    lr, ref_lr = optax.piecewise_constant_schedule(0.125, {30: 0.5}), (
        lambda c: 0.125 if c < 30 else 0.0625)
  else:
    ref_lr = lr
  with jax.enable_x64(dtype == np.float64):
    tree = make_tree(21, dtype)
    leaves = jax.tree.leaves(tree)
    step = ref.larc(leaves, ref_lr, momentum=0.9, weight_decay=1e-3,
                    trust_coefficient=0.02, clip=clip, nesterov=nesterov)

    class Ref:
      def step(self, grads, params):
        return step(grads, params)

    seen = {'clipped': 0.0}

    def check(state, reference, t):
      del reference, t
      seen['clipped'] += float(
          optax_lambc.trust_ratio_stats(state).clipped_upper_fraction)

    run_lockstep(optax_lambc.larc(lr, momentum=0.9, weight_decay=1e-3,
                                  trust_coefficient=0.02, clip=clip,
                                  nesterov=nesterov),
                 Ref(), tree, steps=50, seed=21, jit=jit, rtol=rtol,
                 on_step=check)
  assert (seen['clipped'] > 0) == clip


def test_larc_effective_rate_is_min_of_local_and_global():
  params = {'big': jnp.full((4,), 10.0), 'small': jnp.full((4,), 1e-3)}
  grads = jax.tree.map(jnp.ones_like, params)
  opt = optax_lambc.larc(0.1, momentum=0.0, trust_coefficient=0.02)
  u, _ = opt.update(grads, opt.init(params), params)
  # big: local = 0.02 * 20 / 2 = 0.2 > 0.1 -> rate 0.1; small: 1e-5.
  np.testing.assert_allclose(np.asarray(u['big']), -0.1, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(u['small']), -0.02 * 1e-3, rtol=1e-5)


def test_larc_bad_arguments():
  with pytest.raises(ValueError, match='momentum'):
    optax_lambc.larc(0.1, momentum=1.0)
  with pytest.raises(ValueError, match='trust_coefficient'):
    optax_lambc.larc(0.1, trust_coefficient=-1.0)


# --------------------------------------------------------------------------
# Telemetry inside wrappers, and the docstring examples.


def test_stats_found_inside_every_wrapper():
  params = {'w': jnp.ones((3, 3)), 'b': jnp.ones(3)}
  grads = jax.tree.map(jnp.ones_like, params)
  wrapped = [
      optax.inject_hyperparams(optax_lambc.lambc)(learning_rate=1e-2),
      optax.masked(optax_lambc.lambc(1e-2), {'w': True, 'b': False}),
      optax.MultiSteps(optax_lambc.lambc(1e-2), every_k_schedule=1),
      optax.apply_if_finite(optax_lambc.lambc(1e-2), 2),
      optax.multi_transform({'a': optax_lambc.lambc(1e-2),
                             'b': optax_lambc.larc(1e-2)},
                            {'w': 'a', 'b': 'b'}),
  ]
  for opt in wrapped:
    state = opt.init(params)
    _, state = jax.jit(opt.update)(grads, state, params)
    stats = jax.jit(optax_lambc.trust_ratio_stats)(state)
    assert 'w' in stats.by_path('raw')
    metrics = stats.as_metrics()
    assert 'trust_ratio/applied/w' in metrics
    cut = np.asarray(stats.applied) < np.asarray(stats.raw)
    assert metrics['trust_ratio/clipped_upper_fraction'] == pytest.approx(
        cut.mean())


def test_by_path_host_numpy_and_traced_slices_agree():
  params = {'w': jnp.arange(1.0, 13.0).reshape(3, 4), 'b': jnp.ones(2)}
  opt = optax_lambc.lambc(1e-2, layer_axes={'w': 0, 'b': None})
  _, state = opt.update(params, opt.init(params), params)
  stats = optax_lambc.trust_ratio_stats(state)
  host = stats.by_path('raw')
  # On the host: NumPy arrays, fetched once, each of its layer-axes shape.
  assert all(isinstance(v, np.ndarray) for v in host.values())
  assert host['w'].shape == (3,) and host['b'].shape == ()
  traced = jax.jit(lambda s: s.by_path('raw'))(stats)
  assert all(isinstance(v, jax.Array) for v in traced.values())
  for path in host:
    np.testing.assert_array_equal(host[path], np.asarray(traced[path]))
  with pytest.raises(ValueError, match="field must be one of.*'ratio'"):
    stats.by_path('ratio')


def test_stats_without_state_raise_unless_not_required():
  state = optax.adam(1e-3).init({'w': jnp.ones(2)})
  with pytest.raises(ValueError, match='ScaleByClippedTrustRatioState'):
    optax_lambc.trust_ratio_stats(state)
  # One step function for optax.lamb and lambc: empty stats, in jit too.
  stats = jax.jit(lambda s: optax_lambc.trust_ratio_stats(
      s, required=False))(state)
  assert stats.values.shape == (4, 0) and stats.names.paths == ()
  assert stats.as_metrics() == {'trust_ratio/clipped_lower_fraction': 0.0,
                                'trust_ratio/clipped_upper_fraction': 0.0}


@pytest.mark.parametrize('module', [
    'optax_lambc._lambc', 'optax_lambc._bounds', 'optax_lambc._larc',
    'optax_lambc._telemetry', 'optax_lambc._layers', 'optax_lambc._flax',
])
def test_docstring_examples(module):
  result = doctest.testmod(importlib.import_module(module),
                           optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0
