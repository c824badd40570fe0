"""Run with 8 simulated devices (tests/test_parallel.py does): in ``fsdp``
mode a checkpoint is restored straight into the state's shardings (every
restored leaf has the NamedSharding the step expects, with params and
optimizer state sharded over 'data'), and the resumed run ends where the
uninterrupted one ends. Exits non-zero on any mismatch."""

import os
import sys
import tempfile

import devices  # tests/scripts/devices.py

os.environ['XLA_FLAGS'] = devices.xla_flags(8)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from examples.configs import digits  # noqa: E402
from examples.lib import checkpoints
from examples.lib import train as train_lib  # noqa: E402

assert jax.device_count() == 8, jax.devices()
config = digits().replace(global_batch_size=64, num_train_steps=6,
                          checkpoint_every_steps=2, log_every_steps=2,
                          parallel='fsdp', progress=False,
                          bound_policy='running', policy_warmup_steps=1)
root = tempfile.mkdtemp()
full = train_lib.train_and_evaluate(config, os.path.join(root, 'full'))
work = os.path.join(root, 'resumed')
train_lib.train_and_evaluate(config.replace(stop_after_steps=3), work)

exp = train_lib.build(config)
state, step = checkpoints.restore(checkpoints.manager(work), exp.parallel,
                                  exp.state)
assert step == 2, step
sharded = 0
for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                             jax.tree.leaves(exp.state), strict=True):
  assert isinstance(got, jax.Array), (path, type(got))
  assert got.sharding == want.sharding, (path, got.sharding, want.sharding)
  sharded += any(s is not None for s in got.sharding.spec)
assert sharded > 0, 'fsdp shards nothing?'
print(f'fsdp: every restored leaf has its target sharding ({sharded} sharded)')

resumed = train_lib.train_and_evaluate(config, work)
for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(
    full['state'])[0], jax.tree.leaves(resumed['state']), strict=True):
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                err_msg=str(path))
print('fsdp: the resumed run equals the uninterrupted one')
print('CHECKPOINT SHARDING OK')
