"""A transform is two pure functions: one optimizer object serves any number
of models, callables given at build are resolved once by ``init``, and the
state is arrays (and optax's node types) that every checkpointer saves."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lambc


def _model(enc: int, dec: int, head: bool = True) -> dict:
  """An encoder of ``enc`` and a decoder of ``dec`` stacked blocks."""
  rng = np.random.default_rng(enc * 10 + dec)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32) + 0.5
  out = {'enc': {'kernel': f(enc, 4, 4) * 3, 'bias': f(enc, 4)},
         'dec': {'kernel': f(dec, 4, 4) * 0.1, 'bias': f(dec, 4) * 0.01}}
  if head:
    out['head'] = {'kernel': f(4, 2), 'bias': f(2)}
  return out


MODELS = [_model(3, 1), _model(1, 3), _model(2, 2, head=False)]
AXES = {'enc': 0, 'dec': 0, 'head': None}
axes_for = lambda p: {k: v for k, v in AXES.items() if k in p}  # callable


def _run(opt, params, steps=2):
  """Updates and every trust-ratio statistic of a few steps."""
  state, out = opt.init(params), []
  grads = jax.tree.map(lambda p: jnp.cos(p) * 2.0, params)
  for _ in range(steps):
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    stats = optax_lambc.trust_ratio_stats(state)
    out.append((updates, stats.values, stats.names))
  return out, state


def _same(a, b):
  for (ua, va, na), (ub, vb, nb) in zip(a, b, strict=True):
    jax.tree.map(np.testing.assert_array_equal, ua, ub)
    np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))
    assert na == nb


BOUNDS = {
    'number': dict(max_trust_ratio=0.8),
    'schedule': dict(max_trust_ratio=optax.linear_schedule(2.0, 0.5, 3),
                     min_trust_ratio=lambda c: 0.01 * c),
    'tree': dict(max_trust_ratio={'enc': 2.0, 'dec': 0.5, 'head': 1.0}),
    'tree_schedules': dict(max_trust_ratio={
        'enc': optax.linear_schedule(3.0, 1.0, 3), 'dec': 0.5, 'head': 1.0}),
    'dynamic': dict(max_trust_ratio=optax_lambc.dynamic_bounds(
        {'enc': 1.0, 'dec': 0.5, 'head': 2.0}, gamma=0.5)),
    'running': dict(max_trust_ratio=optax_lambc.running_stat_bounds(
        n_std={'enc': 1.0, 'dec': 2.0, 'head': 1.0}, warmup_steps=1)),
}
MASKS = {
    'none': {},
    'tree': dict(mask={'enc': True, 'dec': {'kernel': True, 'bias': False},
                       'head': False}),
    'callable': dict(mask=optax_lambc.exclude_bias_and_norm,
                     trust_ratio_mask=optax_lambc.exclude_bias_and_norm),
}


def _models_for(kwargs):
  """Models whose tree fits every tree-valued argument (a head entry)."""
  trees = [v for v in kwargs.values()
           if isinstance(v, (dict, optax_lambc.BoundPolicy))]
  return [m for m in MODELS if not trees or 'head' in m]


@pytest.mark.parametrize('bound,mask,axes', [
    *((b, m, 'callable') for b in BOUNDS for m in MASKS),
    ('number', 'callable', 'tree'), ('tree', 'tree', 'tree')])
def test_one_lambc_serves_many_models_as_fresh_ones_do(bound, mask, axes):
  layer_axes = AXES if axes == 'tree' else axes_for
  kwargs = {**BOUNDS[bound], **MASKS[mask]}
  build = lambda: optax_lambc.lambc(0.1, weight_decay=0.1,
                                    layer_axes=layer_axes, **kwargs)
  shared = build()
  models = _models_for({**kwargs, 'layer_axes': layer_axes})
  for params in models + models[:1]:  # and back to the first
    _same(_run(shared, params)[0], _run(build(), params)[0])


def test_the_issue_case_reused_optimizer_applies_each_models_bounds():
  opt = optax_lambc.lambc(0.1, layer_axes={'enc': 0, 'dec': 0},
                          max_trust_ratio={'enc': 2.0, 'dec': 0.5})
  p1 = {'enc': jnp.ones((3, 4)) * 3, 'dec': jnp.ones((1, 4)) * 3}
  p2 = {'enc': jnp.ones((1, 4)) * 3, 'dec': jnp.ones((3, 4)) * 3}
  opt.update(p1, opt.init(p1), p1)
  _, state = opt.update(p2, opt.init(p2), p2)
  upper = optax_lambc.trust_ratio_stats(state).by_path('upper')
  np.testing.assert_array_equal(upper['dec'], [0.5, 0.5, 0.5])
  np.testing.assert_array_equal(upper['enc'], [2.0])


@pytest.mark.parametrize('mask', MASKS)
def test_one_larc_serves_many_models(mask):
  masks = {'none': {}, 'tree': dict(
      weight_decay_mask=MASKS['tree']['mask'],
      trust_ratio_mask={'enc': True, 'dec': True, 'head': False}),
           'callable': dict(weight_decay_mask=optax_lambc.exclude_bias_and_norm,
                            trust_ratio_mask=optax_lambc.exclude_bias_and_norm
                            )}[mask]
  build = lambda: optax_lambc.larc(0.1, 1e-2, trust_coefficient=0.02,
                                   layer_axes=axes_for, **masks)
  shared = build()
  for params in _models_for(masks):
    _same(_run(shared, params)[0], _run(build(), params)[0])


def test_one_transform_serves_many_models_with_per_slice_arrays():
  def build():
    return optax_lambc.scale_by_clipped_trust_ratio(
        max_trust_ratio={'enc': 1.0, 'dec': 1.0, 'head': 1.0},
        min_trust_ratio={'enc': 0.0, 'dec': np.array([0.5, 0.6, 0.7]),
                         'head': 0.0}, layer_axes=AXES)
  shared = build()
  fits = [m for m in MODELS if 'head' in m and m['dec']['bias'].shape[0] == 3]
  assert len(fits) == 1
  _same(_run(shared, fits[0])[0], _run(build(), fits[0])[0])
  # Another depth with the same per-slice array: an error naming it, at init.
  with pytest.raises(ValueError, match="`min_trust_ratio` at 'dec/bias'"):
    shared.init(MODELS[0])


def test_a_callable_is_resolved_once_at_init():
  calls = []

  def axes(params):
    calls.append(jax.tree.structure(params))
    return axes_for(params)

  def mask(params, layer_axes=None):
    calls.append(layer_axes)
    return optax_lambc.exclude_bias_and_norm(params, layer_axes)

  opt = optax_lambc.lambc(0.1, weight_decay=0.1, layer_axes=axes, mask=mask,
                          trust_ratio_mask=mask)
  params = MODELS[0]
  state = opt.init(params)
  n = len(calls)
  assert n >= 3  # axes for each consumer, and each mask
  # The mask got the resolved axes, not the callable.
  assert {'enc': {'kernel': (0,), 'bias': (0,)}} .items() <= \
      next(c for c in calls if isinstance(c, dict)).items()
  for _ in range(2):
    _, state = jax.jit(opt.update)(params, state, params)
    _, state = opt.update(params, state, params)
  assert len(calls) == n  # nothing at update


@pytest.mark.parametrize('name', ['lambc', 'larc'])
def test_nnx_optimizer_with_flax_axes_and_bias_norm_masks_trains(name):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  class Block(nnx.Module):
    def __init__(self, rngs):
      self.fc = nnx.Linear(8, 8, rngs=rngs,
                           kernel_metadata={'out_sharding': (None, None)},
                           bias_metadata={'out_sharding': (None,)})
      self.ln = nnx.LayerNorm(8, rngs=rngs,
                              scale_metadata={'out_sharding': (None,)},
                              bias_metadata={'out_sharding': (None,)})

    def __call__(self, x):
      return x + jax.nn.gelu(self.fc(self.ln(x)))

  class Stack(nnx.Module):
    def __init__(self, rngs):
      @nnx.split_rngs(splits=3)
      @nnx.vmap(in_axes=(0,), out_axes=0,
                transform_metadata={nnx.PARTITION_NAME: 'layers'})
      def make(rngs):
        return Block(rngs)
      self.blocks = make(rngs)
      self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def body(x, block):
        return block(x)
      return self.head(body(x, self.blocks))

  with nnx.use_eager_sharding(False):
    model = Stack(nnx.Rngs(0))
  mask = optax_lambc.exclude_bias_and_norm
  tx = (optax_lambc.lambc(1e-2, weight_decay=1e-2, mask=mask,
                          trust_ratio_mask=mask,
                          layer_axes=optax_lambc.layer_axes_from_flax)
        if name == 'lambc' else optax_lambc.larc(
            1e-2, 1e-2, weight_decay_mask=mask, trust_ratio_mask=mask,
            trust_coefficient=0.02,
            layer_axes=optax_lambc.layer_axes_from_flax))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.linspace(-1, 1, 32).reshape(4, 8)
  loss = lambda m: jnp.mean((m(x) - 0.5) ** 2)
  first = float(loss(model))

  @nnx.jit  # the usual train step (other tests update nnx.Optimizer eagerly)
  def train_step(model, optimizer):
    optimizer.update(model, nnx.grad(loss)(model))

  for _ in range(3):
    train_step(model, optimizer)
  assert float(loss(model)) < first
  stats = optax_lambc.trust_ratio_stats(optimizer.opt_state)
  # One ratio per block for the stacked kernel; biases and norms excluded.
  assert stats.by_path('raw')['blocks/fc/kernel'].shape == (3,)
  assert not any('bias' in p or 'ln' in p for p in stats.names.paths)


# --- The state saves everywhere ----------------------------------------------

CONFIGS = {
    'lambc': lambda: optax_lambc.lambc(0.1, weight_decay=0.1,
                                       layer_axes=AXES),
    'masked_running': lambda: optax_lambc.lambc(
        0.1, weight_decay=0.1, layer_axes=axes_for,
        mask=optax_lambc.exclude_bias_and_norm,
        trust_ratio_mask=optax_lambc.exclude_bias_and_norm,
        max_trust_ratio=optax_lambc.running_stat_bounds(warmup_steps=1)),
    'dynamic_tree': lambda: optax_lambc.lambc(
        0.1, layer_axes=AXES, max_trust_ratio=optax_lambc.dynamic_bounds(
            {'enc': 1.0, 'dec': 2.0, 'head': 1.0})),
    'larc_masked': lambda: optax_lambc.larc(
        0.1, 1e-2, layer_axes=axes_for,
        weight_decay_mask={'enc': True, 'dec': False, 'head': True},
        trust_ratio_mask={'enc': True, 'dec': True, 'head': False}),
    'in_wrappers': lambda: optax.MultiSteps(optax.masked(
        optax_lambc.lambc(0.1, layer_axes=axes_for),
        {'enc': True, 'dec': True, 'head': False}), every_k_schedule=1),
}


def _roundtrips(state):
  from flax import serialization  # pylint: disable=g-import-not-at-top
  yield 'to_bytes', serialization.from_bytes(
      state, serialization.to_bytes(state))
  yield 'state_dict', serialization.from_state_dict(
      state, serialization.to_state_dict(state))
  yield 'pickle', pickle.loads(pickle.dumps(state))
  yield 'numpy', jax.tree.map(np.asarray, state)


def check_restored(opt, restore):
  """The next update from ``restore(state)`` is bit-identical to the next
  update from ``state``; the state is arrays only."""
  params = MODELS[0]
  grads = jax.tree.map(jnp.sin, params)
  state = opt.init(params)
  _, state = opt.update(grads, state, params)
  want, want_state = opt.update(grads, state, params)
  for how, restored in restore(state):
    assert jax.tree.structure(restored) == jax.tree.structure(state), how
    got, got_state = opt.update(grads, restored, params)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    jax.tree.map(np.testing.assert_array_equal, got_state, want_state)
  # Only arrays: nothing else a checkpointer would have to know.
  for leaf in jax.tree.leaves(state):
    assert isinstance(leaf, jax.Array), type(leaf)


@pytest.mark.parametrize('config', CONFIGS)
def test_state_saves_and_restores_everywhere(config):
  # orbax: tests/test_checkpoint_formats.py (the examples' dependencies).
  check_restored(CONFIGS[config](), _roundtrips)


# --- Inputs and messages -----------------------------------------------------


def test_numpy_ints_are_layer_axes_everywhere():
  params = {'w': jnp.ones((3, 4)), 'b': jnp.ones(4)}
  for axes in ({'w': (np.int64(0),), 'b': None}, {'w': np.int32(0),
                                                   'b': None}):
    state = optax_lambc.lambc(0.1, layer_axes=axes).init(params)
    assert optax_lambc.trust_ratio_stats(state).values.shape == (4, 4)


@pytest.mark.parametrize('kwargs,match', [
    (dict(max_trust_ratio={'enc': 1.0, 'dec': 1.0, 'haed': 3.0}),
     "entry 'haed' matches no params leaf .*no entry covers 'head/bias'"),
    (dict(mask={'enc': True, 'dec': True, 'haed': False}),
     "no entry covers 'head/bias'"),
    (dict(trust_ratio_mask={'enc': True, 'dec': True, 'hed': True}),
     "no entry covers 'head/bias'"),
    (dict(layer_axes={'enc': 0, 'dec': 0, 'hd': None}),
     "no entry covers 'head/bias'"),
])
def test_typo_hint_names_a_leaf_no_entry_covers(kwargs, match):
  opt = optax_lambc.lambc(1e-3, **{'layer_axes': AXES, **kwargs})
  with pytest.raises(ValueError, match=match):
    opt.init(MODELS[0])


def test_as_metrics_inside_jit_says_it_is_a_host_call():
  opt = optax_lambc.lambc(0.1)
  params = {'w': jnp.ones(3)}
  state = opt.init(params)
  with pytest.raises(TypeError, match='host call'):
    jax.jit(lambda s: optax_lambc.trust_ratio_stats(s).as_metrics())(state)
