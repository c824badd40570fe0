"""scale_by_clipped_trust_ratio: semantics, dtypes, properties, errors."""

import math

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lambc
import reference_numpy as ref


def test_composes_with_sgd_momentum_and_lion():
  params = {'a': jnp.full((4,), 10.0), 'b': jnp.full((4,), 1e-3)}
  grads = {'a': jnp.ones(4), 'b': jnp.ones(4)}
  for direction in (optax.trace(0.9), optax.scale_by_lion()):
    opt = optax.chain(direction,
                      optax_lambc.scale_by_clipped_trust_ratio(0.0, 1.0))
    u, state = opt.update(grads, opt.init(params), params)
    stats = optax_lambc.trust_ratio_stats(state)
    # |w_a| / |u_a| = 10 -> clipped to 1; |w_b| / |u_b| = 1e-3 passes.
    assert float(stats.by_path('applied')['a']) == 1.0
    np.testing.assert_allclose(float(stats.by_path('applied')['b']), 1e-3,
                               rtol=1e-5)
    direction_u, _ = direction.update(grads, direction.init(params), params)
    np.testing.assert_allclose(np.asarray(u['b']),
                               1e-3 * np.asarray(direction_u['b']), rtol=1e-5)


def test_mask_leaves_pass_through():
  params = {'w': jnp.full((2, 2), 100.0), 'b': jnp.full((2,), 100.0)}
  grads = jax.tree.map(jnp.ones_like, params)
  t = optax_lambc.scale_by_clipped_trust_ratio(
      min_trust_ratio=2.0, max_trust_ratio=3.0,
      mask=optax_lambc.exclude_bias_and_norm)
  u, s = t.update(grads, t.init(params), params)
  np.testing.assert_array_equal(np.asarray(u['b']), 1.0)
  np.testing.assert_array_equal(np.asarray(u['w']), 3.0)
  # The mask is resolved once, at init: the state sits inside its
  # FixedMaskState, which records it (structure only, no arrays).
  assert isinstance(s, optax_lambc.FixedMaskState)
  assert s.mask == {'b': optax.MaskedNode(), 'w': None}
  assert optax_lambc.trust_ratio_stats(s).names.paths == ('w',)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_low_precision_norms_in_float32_update_keeps_dtype(dtype):
  # 4096 elements of 1.0: bf16 summation alone would stall at 256.
  params = {'w': jnp.ones((64, 64), dtype)}
  grads = {'w': jnp.full((64, 64), 0.5, dtype)}
  t = optax_lambc.scale_by_clipped_trust_ratio(max_trust_ratio=None)
  u, s = t.update(grads, t.init(params), params)
  assert u['w'].dtype == dtype
  raw = optax_lambc.trust_ratio_stats(s).by_path('raw')['w']
  assert raw.dtype == jnp.float32
  np.testing.assert_allclose(float(raw), 2.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(u['w'], np.float32), 1.0)


def test_float64_stays_float64():
  with jax.enable_x64(True):
    params = {'w': jnp.ones(3, jnp.float64)}
    t = optax_lambc.scale_by_clipped_trust_ratio()
    u, s = t.update({'w': jnp.ones(3, jnp.float64) * 1e-300}, t.init(params),
                    params)
    assert u['w'].dtype == jnp.float64
    stats = optax_lambc.trust_ratio_stats(s)
    assert stats.by_path('raw')['w'].dtype == jnp.float64
    assert float(stats.by_path('applied')['w']) == 1.0


def test_schedule_bound_uses_step_count():
  params = {'w': jnp.full((4,), 10.0)}
  grads = {'w': jnp.ones(4)}  # raw ratio 10
  t = optax_lambc.scale_by_clipped_trust_ratio(
      max_trust_ratio=optax.piecewise_constant_schedule(8.0, {2: 0.25}))
  state = t.init(params)
  applied = []
  for _ in range(4):
    _, state = t.update(grads, state, params)
    applied.append(float(optax_lambc.trust_ratio_stats(state).by_path('applied')['w']))
  assert applied == [8.0, 8.0, 2.0, 2.0]


def test_lower_above_upper_at_run_time_upper_wins():
  params = {'w': jnp.ones(4)}
  t = optax_lambc.scale_by_clipped_trust_ratio(
      min_trust_ratio=lambda c: 5.0, max_trust_ratio=2.0)
  _, s = t.update({'w': jnp.ones(4)}, t.init(params), params)
  assert float(optax_lambc.trust_ratio_stats(s).by_path('applied')['w']) == 2.0


# Away from float32's subnormal range: XLA:CPU flushes subnormals to zero and
# squares below ~1e-19 underflow, so there "zero norm" is decided differently
# from NumPy. Neither is a meaningful bound or update.
_normal = st.floats(-1e3, 1e3, width=32).filter(lambda x: x == 0 or
                                                 abs(x) > 1e-15)
_bound = st.floats(0, 5).filter(lambda x: x == 0 or x > 1e-30)


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
@hypothesis.given(
    w=hnp.arrays(np.float32, st.integers(1, 6), elements=_normal),
    u=hnp.arrays(np.float32, 6, elements=_normal),
    lo=_bound, width=_bound,
    tc=st.floats(1e-3, 10), eps=st.floats(0, 1))
def test_applied_ratio_always_within_bounds(w, u, lo, width, tc, eps):
  hi = lo + width
  u = u[:w.shape[0]]
  t = optax_lambc.scale_by_clipped_trust_ratio(
      lo, hi, trust_coefficient=tc, eps=eps)
  out, s = t.update({'x': jnp.asarray(u)}, t.init({'x': jnp.asarray(w)}),
                    {'x': jnp.asarray(w)})
  a = float(optax_lambc.trust_ratio_stats(s).by_path('applied')['x'])
  assert np.float32(lo) <= a <= np.float32(hi)
  np.testing.assert_allclose(float(optax_lambc.trust_ratio_stats(s).by_path('raw')['x']),
                             ref.raw_ratio(w, u, tc, eps), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out['x']), u * np.float32(a),
                             rtol=1e-6, atol=1e-30)


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(per_layer=st.lists(st.floats(0.01, 10), min_size=3,
                                     max_size=3),
                  scale=st.floats(1e-3, 1e3))
def test_per_layer_bounds_property(per_layer, scale):
  params = {'a': jnp.full((3,), scale), 'b': jnp.full((2, 2), scale),
            'c': jnp.full((5,), scale)}
  grads = jax.tree.map(jnp.ones_like, params)
  upper = dict(zip('abc', per_layer, strict=True))
  t = optax_lambc.scale_by_clipped_trust_ratio(max_trust_ratio=upper)
  _, s = t.update(grads, t.init(params), params)
  for k in 'abc':
    stats = optax_lambc.trust_ratio_stats(s)
    assert float(stats.by_path('applied')[k]) <= np.float32(upper[k])
    assert float(stats.by_path('upper')[k]) == np.float32(upper[k])


# --------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize('kwargs,match', [
    (dict(min_trust_ratio=-0.1), 'min_trust_ratio'),
    (dict(max_trust_ratio=-1.0), 'max_trust_ratio'),
    (dict(min_trust_ratio=2.0, max_trust_ratio=1.0), 'must not exceed'),
    (dict(max_trust_ratio=math.nan), 'max_trust_ratio.*NaN'),
    (dict(min_trust_ratio=math.nan), 'min_trust_ratio.*NaN'),
    (dict(min_trust_ratio=None), 'min_trust_ratio'),
    (dict(max_trust_ratio={'a': -1.0}), r"max_trust_ratio\[a\]"),
    (dict(trust_coefficient=-1.0), 'trust_coefficient'),
    (dict(eps=-1e-3), 'eps'),
    (dict(weight_norm_bounds=(1.0, 0.5)), 'weight_norm_bounds'),
    (dict(min_trust_ratio=optax_lambc.dynamic_bounds()), 'as `max_trust'),
])
def test_transform_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optax_lambc.scale_by_clipped_trust_ratio(**kwargs)


@pytest.mark.parametrize('kwargs,match', [
    (dict(b1=1.0), 'b1'), (dict(b1=-0.1), 'b1'), (dict(b2=1.5), 'b2'),
    (dict(eps=-1.0), 'eps'), (dict(eps_root=-1.0), 'eps_root'),
    (dict(weight_decay=-1e-4), 'weight_decay'),
    (dict(min_trust_ratio=3.0, max_trust_ratio=1.0), 'must not exceed'),
    (dict(max_trust_ratio=float('nan')), 'NaN'),
])
def test_lambc_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optax_lambc.lambc(1e-3, **kwargs)


def test_params_none_raises_optax_error():
  opt = optax_lambc.lambc(1e-3)
  params = {'w': jnp.ones(2)}
  with pytest.raises(ValueError, match='params'):
    opt.update(params, opt.init(params))
  t = optax_lambc.scale_by_clipped_trust_ratio()
  with pytest.raises(ValueError, match='params'):
    t.update(params, t.init(params))


def test_integer_leaves_name_the_path():
  opt = optax_lambc.lambc(1e-3)
  bad = {'layer': {'w': jnp.ones(2, jnp.int32)}}
  with pytest.raises(TypeError, match="params leaf 'layer/w'.*int32"):
    opt.init(bad)
  # Updates are not re-checked on every step (optax does not either).


def test_mismatched_structures_name_both():
  opt = optax_lambc.lambc(1e-3)
  params = {'a': jnp.ones(2), 'b': jnp.ones(2)}
  # Adam's tree map meets the mismatch first, with JAX's message.
  with pytest.raises(ValueError, match="Dict key mismatch|different"):
    opt.update({'a': jnp.ones(2), 'c': jnp.ones(2)}, opt.init(params), params)
  t = optax_lambc.scale_by_clipped_trust_ratio()
  with pytest.raises(ValueError, match=r"updates PyTreeDef\(\{'a': \*, 'c': "
                     r"\*\}\) and params PyTreeDef\(\{'a': \*, 'b': \*\}\)"):
    t.update({'a': jnp.ones(2), 'c': jnp.ones(2)}, t.init(params), params)


def test_per_layer_bound_not_a_prefix_names_structures():
  params = {'a': jnp.ones(2), 'b': jnp.ones(2)}
  t = optax_lambc.scale_by_clipped_trust_ratio(max_trust_ratio={'z': 1.0})
  with pytest.raises(ValueError,
                     match="`max_trust_ratio` entry 'z' matches no"):
    t.update(params, t.init(params), params)


def test_non_bool_mask_names_the_path():
  params = {'a': jnp.ones(2)}
  t = optax_lambc.scale_by_clipped_trust_ratio(mask={'a': 1.5})
  with pytest.raises(TypeError, match="`mask` at 'a'"):
    t.init(params)


@pytest.mark.parametrize('sums', ['cpu', 'gpu'])
def test_every_norm_layout_matches_numpy(sums, monkeypatch):
  # One leaf per way `layer_norms` sums (optax_lambc/_layers.py): small
  # leaves (a scalar, a stacked one) in one reduction each, big same-shaped
  # leaves (and a stacked one) whose row sums share a group, and a lone big
  # leaf with many row sums (an embedding) whose weights and updates are
  # summed apart.
  # On a GPU a small unstacked leaf takes both norms in one variadic
  # reduction; the 'gpu' case runs that branch here.
  if sums == 'gpu':
    monkeypatch.setattr(jax.lax, 'platform_dependent',
                        lambda *args, cuda, **others: cuda(*args))
  rng = np.random.default_rng(11)
  shapes = {'scalar': (), 'small': (7, 3), 'small_stack': (3, 4, 5),
            'pair_a': (64, 80), 'pair_b': (64, 80), 'lone': (90, 60),
            'embed': (5000, 2), 'stack': (3, 70, 80)}
  stacked = ('stack', 'small_stack')
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32)
            for k, s in shapes.items()}
  updates = {k: jnp.asarray(rng.normal(size=s) * 1e-2, jnp.float32)
             for k, s in shapes.items()}
  axes = {k: (0 if k in stacked else None) for k in shapes}
  t = optax_lambc.scale_by_clipped_trust_ratio(0.0, None, layer_axes=axes)
  out, state = jax.jit(t.update)(updates, t.init(params), params)
  raw = optax_lambc.trust_ratio_stats(state).by_path('raw')
  for k in shapes:
    w, u = np.asarray(params[k], np.float64), np.asarray(updates[k], np.float64)
    per = (1, 2) if k in stacked else None
    want = np.sqrt((w * w).sum(axis=per)) / np.sqrt((u * u).sum(axis=per))
    np.testing.assert_allclose(raw[k], want, rtol=1e-5, err_msg=k)
    scale = want[:, None, None] if k in stacked else want
    np.testing.assert_allclose(np.asarray(out[k]), scale * u, rtol=1e-5,
                               err_msg=k)
  if sums == 'cpu':
    return
  # Gradients through the update, w.r.t. the params alone (the updates'
  # tangent is zero) and both: the GPU's sums give what CPU's give.
  state = t.init(params)
  loss = lambda p, u: sum(jnp.sum(jnp.sin(x)) for x in
                          jax.tree.leaves(t.update(u, state, p)[0]))
  # Jitted (eagerly each operation compiles on its own); traced afresh on
  # each call, so under whichever sums are patched in.
  both = lambda: [jax.jit(jax.grad(loss, argnums=a))(params, updates)
                  for a in (0, (0, 1))]
  grads = both()
  monkeypatch.undo()  # CPU's sums, the reference
  want = both()
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize('platform', ['cpu', 'cuda', 'rocm', 'tpu'])
def test_small_leaves_take_both_norms_in_one_reduction_on_gpu(platform):
  # XLA:GPU takes a small leaf's two norms in two kernels when the update does
  # not read the weights (no weight decay); one variadic reduction takes them
  # in one. Not on CPU (slower), not on TPU (more fusions), and not per layer
  # of a stacked leaf (the SPMD partitioner all-gathers it when sharded).
  t = optax_lambc.scale_by_clipped_trust_ratio(
      0.0, 1.0, layer_axes={'b': None, 'w': None, 'stacked': 0})
  params = {'b': jnp.ones(5), 'w': jnp.ones((3, 4)),
            'stacked': jnp.ones((2, 3))}
  module = jax.export.export(jax.jit(t.update), platforms=[platform])(
      params, t.init(params), params).mlir_module()
  reduces = [line for line in module.splitlines() if 'stablehlo.reduce' in line]
  variadic = [line for line in reduces if ':2 = stablehlo.reduce' in line]
  gpu = platform in ('cuda', 'rocm')
  assert (len(variadic), len(reduces)) == ((2, 4) if gpu else (0, 6)), reduces
