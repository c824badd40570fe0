"""Stacked layers (``layer_axes``): one model written stacked and unrolled.

The stacked model keeps L layers in one leaf with a leading layer axis (as
``nnx.scan``/``nn.scan`` do); the unrolled model holds the same values as L
separate leaves. With ``layer_axes`` both must train identically, step by step,
and report the same per-layer telemetry. The NumPy reference cuts stacked
leaves into layers on its own (``tests/reference_numpy.py``).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lambc
from helpers import GradFn, matrix, run_lockstep
import reference_numpy as ref

L = 3
# Path -> layer axes of the stacked leaves; every other leaf is one layer.
AXES = {'blocks/attn/kernel': (0,), 'blocks/attn/bias': (0,),
        'blocks/ln/scale': (0,), 'stages/kernel': (0, 1)}
LAYER_AXES = {'blocks': 0, 'stages': (0, 1), 'embed': None, 'head': None}


def stacked_tree(seed: int, dtype=np.float32) -> dict:
  """Stacked leaves whose layers differ in scale by up to 1e3, so that each
  slice gets its own ratio and the bounds bind on some slices only."""
  rng = np.random.default_rng(seed)
  scale = lambda *lead: 10.0 ** rng.uniform(-2, 1, size=lead)
  tree = {
      'blocks': {
          'attn': {'kernel': rng.normal(size=(L, 6, 4)) *
                   scale(L)[:, None, None],
                   'bias': rng.normal(size=(L, 4)) * scale(L)[:, None]},
          'ln': {'scale': 1.0 + 0.1 * rng.normal(size=(L, 4))},
      },
      'stages': {'kernel': rng.normal(size=(2, L, 4, 3)) *
                 scale(2, L)[:, :, None, None]},
      'embed': rng.normal(size=(10, 4)),
      'head': np.zeros((4, 2)),  # zero-initialised: ratio 1 rule
  }
  return jax.tree.map(lambda x: np.asarray(x, dtype), tree)


def _path(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator='/')


def unroll(tree: dict) -> dict:
  """A flat dict with one leaf per layer: ``'path[i]'`` for stacked slices."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = _path(path)
    axes = AXES.get(key, ())
    if not axes:
      out[key] = x
      continue
    for idx in np.ndindex(*[x.shape[a] for a in axes]):
      out[f'{key}[{",".join(map(str, idx))}]'] = x[idx]
  return out


def restack(flat: dict, like: dict) -> dict:
  """Inverse of :func:`unroll` (layer axes lead in every stacked leaf)."""
  leaves = []
  for path, x in jax.tree_util.tree_flatten_with_path(like)[0]:
    key = _path(path)
    axes = AXES.get(key, ())
    if not axes:
      leaves.append(flat[key])
      continue
    lead = [x.shape[a] for a in axes]
    rows = [flat[f'{key}[{",".join(map(str, i))}]'] for i in np.ndindex(*lead)]
    leaves.append(jnp.stack(rows).reshape(x.shape))
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


def per_slice_bounds(kind: str):
  """The same upper bounds given per stacked slice and per unrolled leaf."""
  kernel = np.array([0.5, 1.0, 3.0])
  stacked = {'blocks': {'attn': {'kernel': kernel, 'bias': 2.0},
                        'ln': 1.0},
             'stages': np.array([[1.0, 0.3, 2.0], [5.0, 1.0, 0.7]]),
             'embed': 1.0, 'head': 1.0}
  unrolled = {}
  for key in unroll(stacked_tree(0)):
    if key.startswith('blocks/attn/kernel['):
      unrolled[key] = float(kernel[int(key[-2])])
    elif key.startswith('blocks/attn/bias'):
      unrolled[key] = 2.0
    elif key.startswith('stages'):
      i, j = map(int, key[key.index('[') + 1:-1].split(','))
      unrolled[key] = float(stacked['stages'][i, j])
    else:
      unrolled[key] = 1.0
  return stacked if kind == 'stacked' else unrolled


def make_pair(case: str):
  """(stacked optimizer, unrolled optimizer) for one configuration."""
  sched = optax.linear_schedule(5.0, 0.5, 60)
  if case == 'fixed':
    kw = dict(min_trust_ratio=0.05, max_trust_ratio=1.0)
    return (optax_lambc.lambc(1e-2, layer_axes=LAYER_AXES, **kw),
            optax_lambc.lambc(1e-2, **kw))
  if case == 'schedule':
    return (optax_lambc.lambc(1e-2, max_trust_ratio=sched,
                              layer_axes=LAYER_AXES),
            optax_lambc.lambc(1e-2, max_trust_ratio=sched))
  if case == 'per_slice':
    return (optax_lambc.lambc(1e-2, max_trust_ratio=per_slice_bounds(
        'stacked'), layer_axes=LAYER_AXES),
            optax_lambc.lambc(1e-2, max_trust_ratio=per_slice_bounds(
                'unrolled')))
  if case == 'dynamic':
    pol = optax_lambc.dynamic_bounds(1.0, gamma=0.05)
    return (optax_lambc.lambc(1e-2, max_trust_ratio=pol,
                              layer_axes=LAYER_AXES),
            optax_lambc.lambc(1e-2, max_trust_ratio=pol))
  if case == 'running':
    pol = optax_lambc.running_stat_bounds(1.0, decay=0.9, warmup_steps=5)
    return (optax_lambc.lambc(1e-2, max_trust_ratio=pol,
                              layer_axes=LAYER_AXES),
            optax_lambc.lambc(1e-2, max_trust_ratio=pol))
  if case == 'masks_wd':
    mask = functools.partial(optax_lambc.exclude_bias_and_norm,
                             layer_axes=LAYER_AXES)
    return (optax_lambc.lambc(1e-2, weight_decay=1e-2, mask=mask,
                              trust_ratio_mask=mask, layer_axes=LAYER_AXES),
            optax_lambc.lambc(1e-2, weight_decay=1e-2,
                              mask=optax_lambc.exclude_bias_and_norm,
                              trust_ratio_mask=optax_lambc.exclude_bias_and_norm
                              ))
  if case == 'larc':
    lr = optax.cosine_decay_schedule(0.05, 100)
    return (optax_lambc.larc(lr, 1e-3, trust_coefficient=0.02,
                             layer_axes=LAYER_AXES),
            optax_lambc.larc(lr, 1e-3, trust_coefficient=0.02))
  raise ValueError(case)


def _stats_by_layer(state) -> dict:
  """Per-layer telemetry as {unrolled key: (raw, applied, lower, upper)}."""
  stats = optax_lambc.trust_ratio_stats(state)
  fields = [stats.by_path(f) for f in ('raw', 'applied', 'lower', 'upper')]
  out = {}
  for path, raw in fields[0].items():
    key = path.removesuffix('/value')
    values = [f[path] for f in fields]
    if not np.ndim(raw):
      out[key] = values
      continue
    for idx in np.ndindex(*np.shape(raw)):
      out[f'{key}[{",".join(map(str, idx))}]'] = [v[idx] for v in values]
  return out


CASES = ['fixed', 'schedule', 'per_slice', 'dynamic', 'running', 'masks_wd',
         'larc']


@pytest.mark.parametrize('case,jit,dtype,rtol', matrix(CASES, also=2))
def test_stacked_equals_unrolled(case, jit, dtype, rtol):
  # Eager steps are slow, and a shorter run shows their equality as well.
  steps = 40 if jit else 12
  with jax.enable_x64(dtype == np.float64):
    tree = stacked_tree(11, dtype)
    opt_s, opt_u = make_pair(case)
    params_s = jax.tree.map(jnp.asarray, tree)
    params_u = unroll(params_s)
    state_s, state_u = opt_s.init(params_s), opt_u.init(params_u)
    leaves, treedef = jax.tree.flatten(tree)
    grad_fn = GradFn(leaves, seed=5, steps=steps)

    def step(opt, grads, state, params):
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    step_s = functools.partial(step, opt_s)
    step_u = functools.partial(step, opt_u)
    if jit:
      step_s, step_u = jax.jit(step_s), jax.jit(step_u)
    clipped = 0.0
    for t in range(steps):
      g = jax.tree.unflatten(treedef, grad_fn(
          [np.asarray(x) for x in jax.tree.leaves(params_s)], t))
      # The unrolled model's gradient is computed from its own params.
      g_u = jax.tree.unflatten(treedef, grad_fn(
          [np.asarray(x) for x in jax.tree.leaves(restack(params_u, tree))],
          t))
      params_s, state_s = step_s(g, state_s, params_s)
      params_u, state_u = step_u(unroll(g_u), state_u, params_u)
      clipped += float(optax_lambc.trust_ratio_stats(
          state_s).clipped_upper_fraction)
      if t % 3:  # the per-slice telemetry, every third step
        continue
      got, want = _stats_by_layer(state_s), _stats_by_layer(state_u)
      assert got.keys() == want.keys()
      for key in want:
        np.testing.assert_allclose(np.asarray(got[key], np.float64),
                                   np.asarray(want[key], np.float64),
                                   rtol=rtol * 10, err_msg=f'{key} step {t}')
      if (t + 1) % 20 == 0 or t == steps - 1:
        for (path, a), b in zip(
            jax.tree_util.tree_flatten_with_path(params_s)[0],
            jax.tree.leaves(restack(params_u, tree)), strict=True):
          scale = max(float(np.abs(b).max()), 1e-3)
          np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol,
                                     atol=rtol * scale,
                                     err_msg=f'{_path(path)} step {t}')
  assert clipped > 0, 'the upper bound never bound a slice'


def test_stacked_telemetry_is_per_slice():
  params = jax.tree.map(jnp.asarray, stacked_tree(0))
  opt = optax_lambc.lambc(1e-2, layer_axes=LAYER_AXES)
  _, state = opt.update(params, opt.init(params), params)
  stats = optax_lambc.trust_ratio_stats(state)
  assert stats.by_path('raw')['blocks/attn/kernel'].shape == (L,)
  assert stats.by_path('upper')['stages/kernel'].shape == (2, L)
  assert stats.by_path('raw')['embed'].shape == ()
  metrics = stats.as_metrics()
  assert 'trust_ratio/raw/blocks/attn/kernel[2]' in metrics
  assert 'trust_ratio/applied/stages/kernel[1,2]' in metrics
  # 3 + 3 + 3 + 6 slices and 2 whole leaves: fractions count 17 layers.
  n_layers = sum(np.size(v) for v in stats.by_path('raw').values())
  assert n_layers == 17
  frac = float(stats.clipped_upper_fraction)
  assert frac * n_layers == pytest.approx(round(frac * n_layers))


@pytest.mark.parametrize('bounds', [(0.0, 1.0), (0.1, 3.0)], ids=str)
def test_stacked_matches_numpy_reference(bounds):
  lo, hi = bounds
  tree = stacked_tree(3)
  leaves = jax.tree.leaves(tree)
  axes = [AXES.get(_path(p), ()) for p, _ in
          jax.tree_util.tree_flatten_with_path(tree)[0]]
  seen = []

  def check(state, reference, step):
    del step
    stats = optax_lambc.trust_ratio_stats(state)
    raw = np.concatenate([np.ravel(v) for v in stats.by_path('raw').values()])
    applied = np.concatenate(
        [np.ravel(v) for v in stats.by_path('applied').values()])
    np.testing.assert_allclose(raw, reference.raw, rtol=1e-4)
    np.testing.assert_allclose(applied, reference.applied, rtol=1e-4)
    seen.append(float(stats.clipped_upper_fraction))

  run_lockstep(
      optax_lambc.lambc(1e-2, weight_decay=1e-2, min_trust_ratio=lo,
                        max_trust_ratio=hi, layer_axes=LAYER_AXES),
      ref.Lambc(leaves, 1e-2, weight_decay=1e-2, min_trust_ratio=lo,
                max_trust_ratio=hi, layer_axes=axes),
      tree, steps=50, seed=3, on_step=check)
  assert max(seen) > 0


def test_stacked_larc_matches_numpy_reference():
  tree = stacked_tree(4)
  leaves = jax.tree.leaves(tree)
  axes = [AXES.get(_path(p), ()) for p, _ in
          jax.tree_util.tree_flatten_with_path(tree)[0]]

  class Ref:
    def __init__(self):
      self.step = ref.larc(leaves, 0.05, weight_decay=1e-3,
                           trust_coefficient=0.02, layer_axes=axes)

  r = Ref()
  run_lockstep(optax_lambc.larc(0.05, 1e-3, trust_coefficient=0.02,
                                layer_axes=LAYER_AXES),
               r, tree, steps=50, seed=4)


def test_negative_layer_axes_equal_positive():
  params = {'w': jnp.arange(24.0).reshape(2, 3, 4) + 1.0}
  grads = jax.tree.map(jnp.ones_like, params)
  results = []
  for axes in [(0,), (-3,), 0, -3]:
    t = optax_lambc.scale_by_clipped_trust_ratio(layer_axes={'w': axes})
    u, s = t.update(grads, t.init(params), params)
    raw = optax_lambc.trust_ratio_stats(s).by_path('raw')['w']
    results.append((np.asarray(u['w']), np.asarray(raw)))
  for u, r in results[1:]:
    np.testing.assert_array_equal(u, results[0][0])
    np.testing.assert_array_equal(r, results[0][1])
  assert results[0][1].shape == (2,)


def test_layer_axes_callable_and_inner_axis():
  # A layer axis need not lead: axis 1 of a (4, 3, 2) leaf gives 3 layers.
  params = {'w': jnp.arange(24.0).reshape(4, 3, 2)}
  grads = jax.tree.map(jnp.ones_like, params)
  t = optax_lambc.scale_by_clipped_trust_ratio(
      max_trust_ratio=None, layer_axes=lambda p: {'w': 1})
  _, s = t.update(grads, t.init(params), params)
  w = np.arange(24.0).reshape(4, 3, 2)
  want = np.linalg.norm(w, axis=(0, 2)) / np.sqrt(8)
  raw = optax_lambc.trust_ratio_stats(s).by_path('raw')['w']
  np.testing.assert_allclose(raw, want, rtol=1e-6)


def test_stacked_bias_is_still_a_bias():
  params = {'bias': jnp.zeros((6, 4)), 'kernel': jnp.ones((6, 4, 4)),
            'flat_kernel': jnp.ones((4, 4))}
  axes = {'bias': 0, 'kernel': 0, 'flat_kernel': None}
  assert optax_lambc.exclude_bias_and_norm(params, layer_axes=axes) == {
      'bias': False, 'kernel': True, 'flat_kernel': True}
  # Without the layer axes a stacked bias looks like a kernel (the old bug).
  assert optax_lambc.exclude_bias_and_norm(params)['bias'] is True


def test_nan_and_zero_rules_apply_per_slice():
  # A NaN in one stacked layer's update makes only that layer's ratio NaN; a
  # zero-initialised layer gets ratio 1 (then clipped), its neighbours their
  # own ratios.
  params = jnp.stack([jnp.full((2, 2), 3.0), jnp.zeros((2, 2)),
                      jnp.full((2, 2), 0.5)])
  updates = jnp.ones((3, 2, 2)).at[2, 0, 0].set(jnp.nan)
  t = optax_lambc.scale_by_clipped_trust_ratio(max_trust_ratio=2.0,
                                               layer_axes=0)
  u, s = t.update(updates, t.init(params), params)
  raw = np.asarray(s.raw_ratio)
  assert raw[0] == pytest.approx(3.0) and raw[1] == 1.0 and np.isnan(raw[2])
  np.testing.assert_allclose(np.asarray(s.applied_ratio)[:2], [2.0, 1.0])
  np.testing.assert_allclose(np.asarray(u[0]), 2.0)
  assert np.isnan(np.asarray(u[2])).all()
  assert np.isfinite(np.asarray(u[:2])).all()
