"""Train one task: ``python -m examples.train cifar10 --workdir runs/c10``.

Presets: cifar10, imagenet64, digits. Override any field with
``--set key=value`` (e.g. ``--set optimizer=lamb --set mock_data=true``).
Multi-host: every process runs the same command; set ``JAX_COORDINATOR``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (or run on a TPU pod, where
``jax.distributed.initialize()`` finds them itself).
"""

import os
import sys

from examples.configs import PRESETS
from examples.lib import config as config_lib


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize when launched on several hosts."""
  import jax  # pylint: disable=g-import-not-at-top
  if os.environ.get('JAX_COORDINATOR'):
    jax.distributed.initialize(
        coordinator_address=os.environ['JAX_COORDINATOR'],
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']))
  elif os.environ.get('TPU_WORKER_HOSTNAMES') or os.environ.get(
      'CLOUD_TPU_TASK_ID'):
    jax.distributed.initialize()


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] not in PRESETS:
    raise SystemExit(f'usage: python -m examples.train {{{",".join(PRESETS)}}}'
                     ' --workdir DIR [--set key=value ...]')
  config, workdir = config_lib.cli(PRESETS[argv[0]](), __doc__, argv[1:])
  maybe_initialize_distributed()
  from examples.lib.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  result = train_and_evaluate(config, workdir)
  if 'eval' in result:
    print(f"final eval accuracy {result['eval']['accuracy']:.4f} "
          f"({result['eval']['count']} examples)")


if __name__ == '__main__':
  main()
