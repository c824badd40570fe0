"""Run with 8 simulated devices (tests/test_parallel.py does): the FSDP step.

Every parameter, its gradient and its Adam moments (or momentum) are sharded
over 8 devices, on the leaf's largest axis divisible by 8 or on its first
axis; the rest of the optimizer state is replicated. For lambc (per-slice
bounds, telemetry returned by the step) and larc, on an unrolled and a
stacked tree, the compiled step must make no all-gather and no more
collectives than optax.lamb's, and three sharded steps must equal three
unsharded ones (params and per-layer telemetry). Prints one line per case
and exits non-zero on any failure.
"""

import os
import re
import sys

import devices  # tests/scripts/devices.py

os.environ['XLA_FLAGS'] = devices.xla_flags(8)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optax_lambc  # noqa: E402

assert jax.device_count() == 8, jax.devices()
MESH = jax.make_mesh((8,), ('fsdp',),
                     axis_types=(jax.sharding.AxisType.Auto,))
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
               'collective-permute')
rng = np.random.default_rng(0)


def leaf(*shape, scale=1.0):
  return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)


UNROLLED = {'embed': leaf(256, 32), 'head': {'kernel': leaf(32, 256),
                                             'bias': leaf(256)},
            **{f'block{i}': {'fc': leaf(32, 128, scale=10.0 ** (i - 2)),
                             'proj': leaf(128, 32), 'ln': leaf(32)}
               for i in range(4)}}
STACKED = {'embed': leaf(256, 32), 'head': {'kernel': leaf(32, 256),
                                            'bias': leaf(256)},
           'blocks': {'fc': leaf(4, 32, 128) * jnp.logspace(
               -2, 1, 4)[:, None, None], 'proj': leaf(4, 128, 32),
                      'ln': leaf(4, 32)}}
AXES = {'unrolled': None, 'stacked': {'embed': None, 'head': None,
                                      'blocks': 0}}


def spec(shape, rule):
  """The leaf's FSDP spec: its largest (or first) axis divisible by 8."""
  dims = [i for i in np.argsort(shape)[::-1] if shape[i] % 8 == 0]
  if rule == 'first':
    dims = [i for i in range(len(shape)) if shape[i] % 8 == 0][:1]
  out = [None] * len(shape)
  if dims and np.prod(shape) >= 256:
    out[dims[0]] = 'fsdp'
  return P(*out)


def optimizers(tree):
  axes = AXES[tree]
  slices = {'embed': 1.0, 'head': 1.0, 'blocks': np.array([0.5, 1, 2, 4.0])}
  return {
      'optax.lamb': optax.lamb(1e-2, weight_decay=1e-2),
      'lambc': optax_lambc.lambc(
          1e-2, weight_decay=1e-2, layer_axes=axes,
          max_trust_ratio=slices if tree == 'stacked' else 1.0),
      'larc': optax_lambc.larc(0.1, 1e-2, trust_coefficient=0.02,
                               layer_axes=axes,
                               trust_ratio_mask=optax_lambc
                               .exclude_bias_and_norm),
  }


def shardings(opt, params, rule):
  param_sh = jax.tree.map(lambda p: NamedSharding(MESH, spec(p.shape, rule)),
                          params)
  state = jax.eval_shape(opt.init, params)
  state_sh = optax.tree.map_params(
      opt, lambda _, sh: sh, state, param_sh,
      transform_non_params=lambda _: NamedSharding(MESH, P()))
  return param_sh, state_sh


def make_step(opt):
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    stats = optax_lambc.trust_ratio_stats(state, required=False)
    return optax.apply_updates(params, updates), state, stats.values
  return step


def collectives(opt, params, rule):
  param_sh, state_sh = shardings(opt, params, rule)
  compiled = jax.jit(
      make_step(opt), donate_argnums=(0, 1),
      in_shardings=(param_sh, state_sh, param_sh),
      out_shardings=(param_sh, state_sh, NamedSharding(MESH, P()))).lower(
          params, jax.eval_shape(opt.init, params), params).compile()
  text = compiled.as_text()
  return {k: len(re.findall(rf' {k}(?:-start)?\(', text))
          for k in COLLECTIVES}


def run(opt, params, grads, rule=None):
  if rule is not None:
    param_sh, state_sh = shardings(opt, params, rule)
    params, grads = jax.device_put((params, grads), (param_sh, param_sh))
    state = jax.device_put(opt.init(params), state_sh)
    step = jax.jit(make_step(opt), out_shardings=(param_sh, state_sh, None))
  else:
    state, step = opt.init(params), jax.jit(make_step(opt))
  for _ in range(3):
    params, state, stats = step(params, state, grads)
  return params, stats


failures = 0
for tree, params in (('unrolled', UNROLLED), ('stacked', STACKED)):
  grads = jax.tree.map(lambda p: jnp.asarray(
      rng.normal(size=p.shape), jnp.float32), params)
  for rule in ('largest', 'first'):
    counts = {name: collectives(opt, params, rule)
              for name, opt in optimizers(tree).items()}
    lamb = sum(counts['optax.lamb'].values())
    for name in ('lambc', 'larc'):
      ok = counts[name]['all-gather'] == 0 and sum(
          counts[name].values()) <= lamb
      failures += not ok
      print(f'{tree} {rule} {name}: collectives {counts[name]} (optax.lamb: '
            f'{counts["optax.lamb"]}) {"OK" if ok else "FAIL"}')
    for name in ('lambc', 'larc'):
      opt = optimizers(tree)[name]
      want_p, want_s = run(opt, params, grads)
      got_p, got_s = run(opt, params, grads, rule)
      for a, b in zip(jax.tree.leaves((want_p, want_s)),
                      jax.tree.leaves((got_p, got_s)), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5,
                                   atol=1e-6, err_msg=f'{tree} {rule} {name}')
      print(f'{tree} {rule} {name}: 3 sharded steps equal one device')
print('FSDP OK' if not failures else f'FSDP: {failures} FAILED')
sys.exit(1 if failures else 0)
