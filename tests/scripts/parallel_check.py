"""Run with 8 simulated devices (tests/test_parallel.py does): every parallel
mode's training step equals the single-device step on the same global batch,
and trust ratios of manually sharded params (shard_map + axis_name) equal the
unsharded ones. Exits non-zero with a message on any mismatch."""

import os
import sys

import devices  # tests/scripts/devices.py

os.environ['XLA_FLAGS'] = devices.xla_flags(8)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optax_lambc  # noqa: E402
from examples.configs import cifar10  # noqa: E402
from examples.lib import config as config_lib  # noqa: E402
from examples.lib import train as train_lib  # noqa: E402
from trees import close  # noqa: E402  (tests/scripts/trees.py)
from examples.lib.parallel import Parallel  # noqa: E402

assert jax.device_count() == 8, jax.devices()



# A ResNet with one basic block per stage (BatchNorm, projections, every
# stage): ResNet-18's code path at half the layers, so half the compile time
# for each of the five programs below. Registered in this process only.
config_lib.CLASSIFIERS['resnet10_check'] = ((1, 1, 1, 1), 1)
config = cifar10().replace(
    model='resnet10_check', mock_data=True, mock_num_examples=64, width=4,
    global_batch_size=16, num_train_steps=2, progress=False,
    weight_decay=1e-4, max_trust_ratio=1.0)

# The single-device reference: the same pure step, no mesh, no collectives.
ref_exp = train_lib.build(config.replace(parallel='jit'))
state0 = jax.device_get(ref_exp.state)
ref_step = jax.jit(train_lib.make_train_step(
    ref_exp.task, ref_exp.apply, ref_exp.tx, ref_exp.schedule))
batches = [jax.device_get(ref_exp.train_ds[i]) for i in range(2)]
ref_state = state0
for b in batches:
  ref_state, _ = ref_step(ref_state, b)

for mode in ('jit', 'fsdp', 'pmap', 'shard_map'):
  exp = train_lib.build(config.replace(parallel=mode))
  state = exp.state
  if mode == 'fsdp':  # params and moments really are sharded
    specs = [tuple(x.sharding.spec) for x in jax.tree.leaves(state)]
    n_sharded = sum('data' in s for s in specs)
    assert n_sharded >= 3, specs
    print(f'fsdp: {n_sharded} of {len(specs)} state leaves sharded')
  for b in batches:
    state, metrics = exp.train_step(state, exp.parallel.shard_batch(b))
  got = jax.device_get(exp.parallel.unplace_state(state))
  close(got.params, ref_state.params, f'{mode} params')
  close(got.opt_state, ref_state.opt_state, f'{mode} opt_state')
  close(got.batch_stats, ref_state.batch_stats, f'{mode} batch_stats')
  print(f'{mode}: 2 steps equal the single-device steps')

# Bad config: batch not divisible by the device count, before any compute.
try:
  Parallel.create('jit', 12)
  raise SystemExit('expected a ValueError for batch 12 on 8 devices')
except ValueError as e:
  assert 'not divisible by the 8 devices' in str(e), e

# shard_map with params manually sharded over 'data' on their first axis.
mesh = jax.make_mesh((8,), ('data',),
                     axis_types=(jax.sharding.AxisType.Explicit,))
rng = np.random.default_rng(0)
params = {'w': jnp.asarray(rng.normal(size=(16, 5)) * 10, jnp.float32),
          'v': jnp.asarray(rng.normal(size=(8, 3)) * 1e-3, jnp.float32)}
grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape),
                                           jnp.float32), params)
plain = optax_lambc.lambc(1e-2, weight_decay=1e-2, max_trust_ratio=1.0)
sharded = optax_lambc.lambc(1e-2, weight_decay=1e-2, max_trust_ratio=1.0,
                            axis_name='data')
u_ref, s_ref = plain.update(grads, plain.init(params), params)
row_sharded = jax.sharding.NamedSharding(mesh, P('data'))
params_s, grads_s = jax.device_put((params, grads), row_sharded)


def local_update(g, p):
  u, s = sharded.update(g, sharded.init(p), p)
  stats = optax_lambc.trust_ratio_stats(s)
  return u, stats.by_path('raw'), stats.by_path('applied')


u, raw, applied = jax.jit(jax.shard_map(
    local_update, mesh=mesh, in_specs=(P('data'), P('data')),
    out_specs=(P('data'), P(), P())))(grads_s, params_s)
stats_ref = optax_lambc.trust_ratio_stats(s_ref)
close(raw, stats_ref.by_path('raw'), 'shard_map raw ratio', rtol=1e-6)
close(applied, stats_ref.by_path('applied'), 'shard_map applied ratio',
      rtol=1e-6)
close(u, u_ref, 'shard_map updates', rtol=1e-6)
assert float(stats_ref.by_path('applied')['w']) == 1.0  # the clip did trigger
# Without axis_name each shard would see only its own norm: a different ratio.


def local_update_unreduced(g, p):
  _, s = plain.update(g, plain.init(p), p)
  return jax.tree.map(lambda x: x[None],
                      optax_lambc.trust_ratio_stats(s).by_path('raw'))


raw_bad = jax.jit(jax.shard_map(
    local_update_unreduced, mesh=mesh, in_specs=(P('data'), P('data')),
    out_specs=P('data')))(grads_s, params_s)
assert not np.allclose(np.asarray(raw_bad['v']),
                       float(stats_ref.by_path('raw')['v']))
print('shard_map: trust ratios of sharded params equal the unsharded ones')
print('PARALLEL OK')
