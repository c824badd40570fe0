"""Does the code at two commits train bit for bit the same?

  python -m study.bit_identity 16b0eba HEAD [--steps 4] [--arm LAMB ...]

The LM study switches code only where this check passes: each commit is
checked out into a temporary git worktree, and a fresh Python process there
trains the study's batch-128 configuration (two accumulated micro-batches
of 64, the `lm` preset with the study's settings) for ``--steps`` steps per
arm with that commit's own code; the script then compares every parameter
array's bytes and prints one line per arm. Exit status 0 when every arm is
identical, 1 otherwise. It needs the examples' dependencies installed and
only what every commit since 0.3 has (``examples.configs.lm``,
``examples.lib.train.train_and_evaluate``).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from study import lm

# Runs in the worktree, with its code on the path: train, save the params.
CHILD = r'''
import json, os, sys
import jax, numpy as np
import optax_lambc  # the worktree's own, not an installed copy
assert optax_lambc.__file__.startswith(os.getcwd()), optax_lambc.__file__
from examples.configs import lm
from examples.lib.train import train_and_evaluate
overrides, workdir, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
result = train_and_evaluate(lm().replace(**overrides), workdir)
flat = jax.tree_util.tree_flatten_with_path(result['state'].params)[0]
np.savez(out, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in flat})
'''


def overrides(arm: str, steps: int) -> dict:
  """The study's batch-128 configuration for ``arm``, ``steps`` steps."""
  config = {**lm.BASE, **lm.ARMS[arm], 'global_batch_size': 128,
            'accum_steps': 2, 'num_train_steps': steps,
            'eval_every_steps': steps, 'log_every_steps': 1,
            'learning_rate': 0.0212, 'seed': 0, 'eval_examples': 64,
            'final_eval_splits': ''}
  return config


def train_at(commit: str, arm: str, steps: int, scratch: str) -> dict:
  """The final params (name -> array) of ``arm`` trained at ``commit``."""
  root = subprocess.run(['git', 'rev-parse', '--show-toplevel'],
                        capture_output=True, text=True, check=True
                        ).stdout.strip()
  tree = os.path.join(scratch, f'tree-{commit}')
  if not os.path.exists(tree):
    subprocess.run(['git', '-C', root, 'worktree', 'add', '--detach', tree,
                    commit], check=True, capture_output=True)
  out = os.path.join(scratch, f'{commit}-{len(os.listdir(scratch))}.npz')
  env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-c', CHILD,
                  json.dumps(overrides(arm, steps)),
                  os.path.join(scratch, 'run-' + os.path.basename(out)), out],
                 cwd=tree, env=env, check=True)
  with np.load(out) as f:
    return dict(f)


def identical(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(
      a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and
      a[k].tobytes() == b[k].tobytes() for k in a)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('commits', nargs=2)
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--arm', action='append', choices=list(lm.ARMS),
                      help='default: LAMB, LAMBC max 1 and AdamW')
  args = parser.parse_args(argv)
  arms = args.arm or ['LAMB', 'LAMBC max 1', 'AdamW']
  root = subprocess.run(['git', 'rev-parse', '--show-toplevel'],
                        capture_output=True, text=True, check=True
                        ).stdout.strip()
  ok = True
  try:
    with tempfile.TemporaryDirectory() as scratch:
      for arm in arms:
        a, b = (train_at(c, arm, args.steps, scratch) for c in args.commits)
        same = identical(a, b)
        ok &= same
        print(f'{arm}: {len(a)} arrays, {args.steps} steps: ' +
              ('bit-identical' if same else 'DIFFERENT'), flush=True)
  finally:  # the worktrees' directories are gone: drop their records
    subprocess.run(['git', '-C', root, 'worktree', 'prune'], check=False)
  return 0 if ok else 1


if __name__ == '__main__':
  raise SystemExit(main())
