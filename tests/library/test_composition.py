"""Every optax composition the issue lists, with lambc and larc.

Each case either works as it does with ``optax.lamb``/``optax.lars`` (and the
result is checked) or fails where optax fails too.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lambc

PARAMS = {'embed': jnp.ones((6, 4)),
          'blocks': {'kernel': jnp.arange(48.0).reshape(3, 4, 4) / 10 + 0.1,
                     'bias': jnp.ones((3, 4))},
          'head': {'kernel': jnp.full((4, 2), 0.5), 'bias': jnp.zeros(2)}}
AXES = {'embed': None, 'blocks': 0, 'head': None}
GRADS = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size, dtype=p.dtype)
                                       ).reshape(p.shape) + 0.3, PARAMS)
LABELS = {'embed': 'adam', 'blocks': 'lambc', 'head': 'lambc'}


def step(opt, params=PARAMS, grads=GRADS, jit=True):
  update = jax.jit(opt.update) if jit else opt.update
  state = opt.init(params)
  updates, state = update(grads, state, params)
  updates, state = update(grads, state, params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  return updates, state


BUILDERS = {
    'lambc': lambda **kw: optax_lambc.lambc(1e-2, weight_decay=1e-2, **kw),
    'larc': lambda **kw: optax_lambc.larc(0.1, 1e-2, trust_coefficient=0.02,
                                          **kw),
}


@pytest.mark.parametrize('name', BUILDERS)
def test_init_on_an_empty_tree_returns_a_state(name):
  state = BUILDERS[name]().init({})
  assert optax_lambc.trust_ratio_stats(state).values.shape == (4, 0)
  assert optax.lamb(1e-2).init({}) is not None


@pytest.mark.parametrize('name', BUILDERS)
@pytest.mark.parametrize('partition', ['some', 'none'])
def test_multi_transform_with_whole_model_trees(name, partition):
  labels = LABELS if partition == 'some' else jax.tree.map(
      lambda _: 'adam', LABELS)
  opt = optax.multi_transform(
      {'lambc': BUILDERS[name](
          layer_axes=AXES, **({'mask': {'embed': False, 'blocks': True,
                                        'head': {'kernel': True,
                                                 'bias': False}}}
                              if name == 'lambc' else {})),
       'adam': optax.adam(1e-2)}, labels)
  _, state = step(opt)
  stats = optax_lambc.trust_ratio_stats(state)
  expected = ['blocks/bias', 'blocks/kernel', 'head/bias', 'head/kernel']
  assert list(stats.names.paths) == (expected if partition == 'some' else [])
  # The stacked leaves got one ratio per block.
  assert stats.values.shape[1] == (3 + 3 + 1 + 1 if partition == 'some'
                                   else 0)


def test_multi_transform_still_finds_typos():
  opt = optax.multi_transform(
      {'lambc': optax_lambc.lambc(1e-2, layer_axes={'blokcs': 0}),
       'adam': optax.adam(1e-2)}, LABELS)
  with pytest.raises(ValueError, match="'blokcs' matches no params leaf"):
    opt.init(PARAMS)


def test_masked_per_layer_bounds_equal_mask_argument():
  bounds = {'embed': 0.5, 'blocks': np.array([0.5, 1.0, 2.0]), 'head': 3.0}
  mask = {'embed': True, 'blocks': True, 'head': False}
  t = functools.partial(optax_lambc.scale_by_clipped_trust_ratio,
                        max_trust_ratio=bounds, layer_axes=AXES)
  a, _ = step(optax.masked(t(), mask))
  b, _ = step(t(mask=mask))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
@pytest.mark.parametrize('case', ['crossing', 'negative', 'per_slice'])
def test_inject_hyperparams(case, jit):
  opt = optax.inject_hyperparams(optax_lambc.lambc)(
      learning_rate=1e-2, layer_axes=AXES,
      min_trust_ratio=(optax.linear_schedule(0.0, 2.0, 4) if case == 'crossing'
                       else 0.0),
      max_trust_ratio=(optax.linear_schedule(1.0, -1.0, 2) if case ==
                       'negative' else {'embed': 1.0, 'head': 1.0,
                                        'blocks': np.array([0.5, 1.0, 2.0])}
                       if case == 'per_slice' else 1.0))
  state = opt.init(PARAMS)
  update = jax.jit(opt.update) if jit else opt.update
  for _ in range(4):
    _, state = update(GRADS, state, PARAMS)
  s = optax_lambc.trust_ratio_stats(state)
  applied, lower, upper = map(np.asarray, (s.applied, s.lower, s.upper))
  if case == 'crossing':  # lower 1.5 > upper 1.0: the upper bound wins
    assert np.all(lower > upper) and np.all(applied == upper)
  elif case == 'negative':  # clamped at 0: a zero step, never uphill
    assert np.all(upper == 0) and np.all(applied == 0)
  else:
    np.testing.assert_array_equal(
        s.by_path('upper')['blocks/kernel'], [0.5, 1.0, 2.0])


def test_per_slice_bounds_built_inside_jit():
  @jax.jit
  def meta(scale):
    opt = optax_lambc.lambc(scale * 1e-2, layer_axes=AXES, max_trust_ratio={
        'embed': 1.0, 'head': 1.0, 'blocks': np.array([0.5, 1.0, 2.0])})
    updates, _ = opt.update(GRADS, opt.init(PARAMS), PARAMS)
    return sum(jnp.sum(u) for u in jax.tree.leaves(updates))

  assert np.isfinite(float(meta(1.0)))


def test_grad_through_updates_running_stat_included():
  policy = optax_lambc.running_stat_bounds(n_std=2.0, warmup_steps=1)

  def loss(lr, bound):
    opt = optax_lambc.lambc(lr, max_trust_ratio=policy, layer_axes=AXES)
    state, params = opt.init(PARAMS), PARAMS
    for _ in range(3):
      updates, state = opt.update(GRADS, state, params)
      params = optax.apply_updates(params, updates)
    fixed = optax_lambc.lambc(lr, max_trust_ratio=bound, layer_axes=AXES)
    updates, _ = fixed.update(GRADS, fixed.init(params), params)
    params = optax.apply_updates(params, updates)
    return sum(jnp.sum(p ** 2) for p in jax.tree.leaves(params))

  # Under jit: one compiled program instead of each op's own.
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(0.1, 0.5)
  assert all(np.isfinite(float(g)) and float(g) != 0 for g in grads)


def test_vmap_over_a_population():
  lrs = jnp.array([1e-3, 1e-2, 1e-1])

  def one(lr):
    opt = optax_lambc.lambc(lr, layer_axes=AXES)
    updates, state = opt.update(GRADS, opt.init(PARAMS), PARAMS)
    return updates['head']['kernel'], optax_lambc.trust_ratio_stats(state)

  head, stats = jax.jit(jax.vmap(one))(lrs)  # eagerly: a compile per op
  assert stats.values.shape == (3, 4, 9)
  np.testing.assert_allclose(np.asarray(head[2]) / np.asarray(head[0]), 100,
                             rtol=1e-5)


@pytest.mark.parametrize('name', BUILDERS)
def test_wrappers_and_tree_utilities(name):
  opt = BUILDERS[name](layer_axes=AXES)
  for wrapped in (optax.MultiSteps(opt, every_k_schedule=2),
                  optax.apply_if_finite(opt, 3),
                  optax.lookahead(opt, sync_period=2, slow_step_size=0.5),
                  optax.chain(optax.clip_by_global_norm(1.0), opt)):
    lookahead = 'lookahead' in wrapped.update.__qualname__
    params = optax.LookaheadParams.init_synced(PARAMS) if lookahead else PARAMS
    state = wrapped.init(params)
    _, state = jax.jit(wrapped.update)(GRADS, state, params)
    assert optax_lambc.trust_ratio_stats(state).values.shape[1] == 9
  state = opt.init(PARAMS)
  mapped = optax.tree.map_params(opt, lambda p: p.astype(jnp.bfloat16), state)
  # f maps what mirrors the params, not the per-layer vectors.
  assert optax.tree.get(mapped, 'raw_ratio').dtype == jnp.float32
  if name == 'lambc':
    assert optax.tree.get(mapped, 'mu')['embed'].dtype == jnp.bfloat16
  counts = optax.tree.get_all_with_path(state, 'count')
  assert counts
  shape = jax.eval_shape(opt.init, PARAMS)
  assert jax.tree.structure(shape) == jax.tree.structure(state)


def test_layer_axes_reach_a_callable_mask():
  opt = optax_lambc.lambc(
      1e-2, weight_decay=1.0, layer_axes=AXES,
      mask=optax_lambc.exclude_bias_and_norm,
      trust_ratio_mask=optax_lambc.exclude_bias_and_norm)
  updates, state = step(opt)
  # Stacked biases (3, 4) are biases: neither decayed nor adapted.
  assert 'blocks/bias' not in optax_lambc.trust_ratio_stats(state).names.paths
  plain, _ = step(optax.adam(1e-2, eps=1e-6))
  np.testing.assert_allclose(np.asarray(updates['blocks']['bias']),
                             np.asarray(plain['blocks']['bias']), rtol=1e-6)


def test_nnx_optimizer_telemetry_keys_are_param_paths():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax_lambc.lambc(1e-1), wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 4))) ** 2))(model)
  optimizer.update(model, grads)
  stats = optax_lambc.trust_ratio_stats(optimizer.opt_state)
  assert set(stats.as_metrics()) >= {'trust_ratio/raw/kernel',
                                     'trust_ratio/applied/bias'}


def test_linen_train_state():
  from flax.training import train_state  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  model = nn.Dense(3)
  params = model.init(jax.random.key(0), jnp.ones((1, 4)))['params']
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=params, tx=optax_lambc.lambc(1e-2))
  grads = jax.tree.map(jnp.ones_like, params)
  state = jax.jit(lambda s: s.apply_gradients(grads=grads))(state)
  assert int(state.step) == 1
  assert optax_lambc.trust_ratio_stats(state.opt_state).names.paths == (
      'bias', 'kernel')


def test_zero_layer_leaf_gives_finite_clip_fractions():
  t = optax_lambc.scale_by_clipped_trust_ratio(layer_axes=0)
  params = jnp.zeros((0, 3))
  _, state = t.update(params, t.init(params), params)
  stats = optax_lambc.trust_ratio_stats(state)
  assert float(stats.clipped_upper_fraction) == 0.0
  assert stats.as_metrics()['trust_ratio/clipped_lower_fraction'] == 0.0
