"""One process of a multi-process run on this machine (or a single-process run).

  python tests/scripts/multiprocess_check.py PID NPROC PORT OUTDIR \
      LOCAL_DEVICES [PARALLEL_MODE]

Trains the digits demo for 3 steps with a global batch of 64 under
``jax.distributed`` (coordinator on 127.0.0.1, CPU collectives over gloo) in
the given parallel mode (default ``jit``) and writes this process's copy of
the final params to OUTDIR/params_PID.npz and of the trust-ratio telemetry
(``TrustRatioStats.values``) to OUTDIR/telemetry_PID.npz.
"""

import os
import sys

import devices  # tests/scripts/devices.py

pid, nproc, port, outdir, local_devices = sys.argv[1:6]
mode = sys.argv[6] if len(sys.argv) > 6 else 'jit'
os.environ['XLA_FLAGS'] = devices.xla_flags(int(local_devices))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

jax.config.update('jax_cpu_collectives_implementation', 'gloo')
if int(nproc) > 1:
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}',
                             num_processes=int(nproc), process_id=int(pid),
                             initialization_timeout=120)

import optax_lambc  # noqa: E402
from examples.configs import digits  # noqa: E402
from examples.lib.train import train_and_evaluate  # noqa: E402

assert jax.process_count() == int(nproc)
assert jax.device_count() == int(nproc) * int(local_devices)
config = digits().replace(global_batch_size=64, num_train_steps=3,
                          progress=False, log_every_steps=1, parallel=mode)
result = train_and_evaluate(config, os.path.join(outdir, f'work_{pid}'))
# Whole arrays on every process (fsdp shards params across processes).
params = multihost_utils.process_allgather(result['state'].params,
                                           tiled=True)
flat = {jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
np.savez(os.path.join(outdir, f'params_{pid}.npz'), **flat)
stats = optax_lambc.trust_ratio_stats(result['state'].opt_state)
np.savez(os.path.join(outdir, f'telemetry_{pid}.npz'),
         values=np.asarray(multihost_utils.process_allgather(
             stats.values, tiled=True)))
print(f'process {pid}/{nproc}: done, eval accuracy '
      f'{result["eval"]["accuracy"]:.4f}')
