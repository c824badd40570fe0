"""Train one task: ``python -m examples.main cifar10 --workdir runs/c10``.

The command line (``main``, as in flax's examples); the loop it runs is
``examples.lib.train``.

Presets: cifar10, imagenet64, digits, lm. Override any field with
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
  """Calls jax.distributed.initialize when launched on several hosts.

  ``JAX_HEARTBEAT_TIMEOUT_SECONDS`` (default JAX's 100) bounds how long the
  survivors wait when a process dies; on CPU the collectives use gloo.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if os.environ.get('JAX_COORDINATOR'):
    if os.environ.get('JAX_PLATFORMS', '') == 'cpu':
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=os.environ['JAX_COORDINATOR'],
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']),
        heartbeat_timeout_seconds=int(os.environ.get(
            'JAX_HEARTBEAT_TIMEOUT_SECONDS', 100)))
  elif os.environ.get('TPU_WORKER_HOSTNAMES') or os.environ.get(
      'CLOUD_TPU_TASK_ID'):
    jax.distributed.initialize()


USAGE = (f'usage: python -m examples.main {{{",".join(PRESETS)}}} '
         '--workdir DIR [--set key=value ...]\n'
         '       python -m examples.main PRESET --help   (every --set key)')


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ('-h', '--help'):
    print(__doc__ + '\n' + USAGE)
    raise SystemExit(0 if argv else 2)
  if argv[0] not in PRESETS:
    print(f'error: unknown preset {argv[0]!r}; presets: '
          f'{", ".join(PRESETS)}', file=sys.stderr)
    raise SystemExit(2)
  try:
    config, workdir = config_lib.cli(PRESETS[argv[0]](), __doc__, argv[1:],
                                     prog=f'python -m examples.main {argv[0]}')
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    raise SystemExit(2) from None
  maybe_initialize_distributed()
  from examples.lib import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from examples.lib import train as train_lib  # pylint: disable=g-import-not-at-top
  try:
    result = train_lib.train_and_evaluate(config, workdir)
  except train_lib.Interrupted as e:
    print(e, file=sys.stderr)
    raise SystemExit(130) from None
  except metrics_lib.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    raise SystemExit(1) from None
  except (ValueError, FileNotFoundError) as e:  # bad config, caught by build
    print(f'error: {e}', file=sys.stderr)
    raise SystemExit(2) from None
  if 'eval' in result and 'bits_per_byte' in result['eval']:
    print(f"final {config.eval_split} bits/byte "
          f"{result['eval']['bits_per_byte']:.4f} ({result['eval']['count']:,}"
          f" bytes; next-byte accuracy {result['eval']['accuracy']:.4f})")
  elif 'eval' in result:
    print(f"final eval accuracy {result['eval']['accuracy']:.4f} "
          f"({result['eval']['count']} examples)")


if __name__ == '__main__':
  main()
