"""Run with 8 simulated devices (tests/test_parallel.py does): the language
model's training step in 'jit' and 'fsdp' modes, with and without gradient
accumulation, equals the single-device step on one batch (params and
optimizer state to 1e-5). Exits non-zero with a message on any mismatch."""

import os
import sys

import devices  # tests/scripts/devices.py

os.environ['XLA_FLAGS'] = devices.xla_flags(8)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

import jax  # noqa: E402

from examples.configs import lm  # noqa: E402
from examples.lib import train as train_lib  # noqa: E402
from trees import close  # noqa: E402  (tests/scripts/trees.py)

assert jax.device_count() == 8, jax.devices()



# Batch 32 over 8 devices: 4 sequences per device, so accum_steps=4 runs
# micro-batches of 8 (one sequence per device).
config = lm().replace(seq_len=16, global_batch_size=32, num_train_steps=2,
                      progress=False, checkpoint_every_steps=0,
                      eval_examples=16)

# The single-device reference: the same pure step, no mesh, one batch of 32.
ref_exp = train_lib.build(config)
state0 = jax.device_get(ref_exp.state)
ref_step = jax.jit(train_lib.make_train_step(
    ref_exp.task, ref_exp.apply, ref_exp.tx, ref_exp.schedule))
batches = [jax.device_get(ref_exp.train_ds[i]) for i in range(2)]
ref_state = state0
for b in batches:
  ref_state, ref_metrics = ref_step(ref_state, b)

for mode in ('jit', 'fsdp'):
  for accum in (1, 4):
    exp = train_lib.build(config.replace(parallel=mode, accum_steps=accum))
    state = exp.state
    if mode == 'fsdp':
      specs = [tuple(x.sharding.spec) for x in jax.tree.leaves(state)]
      assert sum('data' in s for s in specs) >= 10, specs
    for b in batches:
      state, metrics = exp.train_step(state, exp.parallel.shard_batch(b))
    got = jax.device_get(state)
    close(got.params, ref_state.params, f'{mode} accum {accum} params')
    close(got.opt_state, ref_state.opt_state,
          f'{mode} accum {accum} opt_state')
    close({k: metrics[k] for k in ('loss', 'accuracy')},
          {k: ref_metrics[k] for k in ('loss', 'accuracy')},
          f'{mode} accum {accum} metrics')
    print(f'lm {mode}, accum_steps={accum} over 8 devices: 2 steps equal '
          'the single-device steps')
print('LM PARALLEL OK')
