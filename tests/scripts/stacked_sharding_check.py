"""Run with 8 simulated devices (tests/test_parallel.py does): per-slice trust
ratios of stacked leaves are the same whether the layer axis or an inner axis
is sharded (jax.jit with NamedSharding), and under shard_map with the inner
axis sharded by hand and ``axis_name``. Exits non-zero on any mismatch."""

import os
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
rng = np.random.default_rng(0)
scale = 10.0 ** rng.uniform(-2, 1, size=(8, 1, 1))
params = {'blocks': jnp.asarray(rng.normal(size=(8, 16, 6)) * scale,
                                jnp.float32),
          'head': jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape),
                                           jnp.float32), params)
layer_axes = {'blocks': 0, 'head': None}
opt = optax_lambc.lambc(1e-2, weight_decay=1e-2, layer_axes=layer_axes)


def step(params, state, grads):
  updates, state = opt.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def run(params, grads):
  state = opt.init(params)
  for _ in range(3):
    params, state = jax.jit(step)(params, state, grads)
  return params, optax_lambc.trust_ratio_stats(state)


def close(a, b, what):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                               atol=1e-7, err_msg=what)


ref_params, ref_stats = run(params, grads)
assert float(ref_stats.clipped_upper_fraction) > 0  # the clip binds somewhere
mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
for name, spec in (('layer axis', P('data')), ('inner axis', P(None, 'data'))):
  sharding = {'blocks': NamedSharding(mesh, spec),
              'head': NamedSharding(mesh, P('data'))}
  p_s, g_s = jax.device_put((params, grads), (sharding, sharding))
  got_params, got_stats = run(p_s, g_s)
  assert got_params['blocks'].sharding.spec == spec, got_params[
      'blocks'].sharding
  close(got_params, ref_params, f'{name}: params')
  close(got_stats.by_path('raw'), ref_stats.by_path('raw'),
        f'{name}: per-slice raw ratios')
  close(got_stats.by_path('applied'), ref_stats.by_path('applied'),
        f'{name}: applied ratios')
  print(f'jit, {name} sharded: 3 steps equal one device')

# shard_map: the inner axis sharded by hand; axis_name sums the per-slice
# squared norms across devices.
manual = optax_lambc.lambc(1e-2, weight_decay=1e-2, layer_axes=0,
                           axis_name='data')
single = optax_lambc.lambc(1e-2, weight_decay=1e-2, layer_axes=0)
blocks, g_blocks = params['blocks'], grads['blocks']
u_ref, s_ref = single.update(g_blocks, single.init(blocks), blocks)
mesh_x = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Explicit,))


def local(g, p):
  u, s = manual.update(g, manual.init(p), p)
  return u, optax_lambc.trust_ratio_stats(s).by_path('raw')['<root>']


inner = NamedSharding(mesh_x, P(None, 'data'))
u, raw = jax.jit(jax.shard_map(
    local, mesh=mesh_x, in_specs=(P(None, 'data'), P(None, 'data')),
    out_specs=(P(None, 'data'), P())))(*jax.device_put((g_blocks, blocks),
                                                      inner))
close(raw, optax_lambc.trust_ratio_stats(s_ref).by_path('raw')['<root>'],
      'shard_map per-slice ratios')
close(u, u_ref, 'shard_map updates')
print('shard_map, inner axis sharded with axis_name: equals one device')
print('STACKED SHARDING OK')
