"""Python overhead of an un-jitted ``update``: lambc against optax.lamb.

An un-jitted update (eager JAX: what ``optax.inject_hyperparams`` users and
debuggers run) pays Python and dispatch costs per leaf. This times
``opt.update(grads, state, params)`` on the BERT-base tree structure (199
leaves, every dimension capped at ``--cap`` so the arithmetic is negligible and
the Python overhead is what is measured), lambc and optax.lamb alternated in
one process, and reports medians and their ratio.

To compare releases, run it with another release's ``optax_lambc`` first on
``PYTHONPATH`` (e.g. a ``git worktree`` of a tag); each run has its own
optax.lamb reference, so the ratios compare across runs:

  python -m benchmarks.update_overhead
  PYTHONPATH=/path/to/v0.2 python -m benchmarks.update_overhead
"""

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import optax_lambc
from benchmarks.step_time import bert_base_shapes
from examples.lib.stats import machine


def capped_tree(cap: int) -> dict:
  """BERT-base's tree structure with every dimension capped at ``cap``."""
  shapes = bert_base_shapes()
  keys = iter(jax.random.split(jax.random.key(0), 256))
  return jax.tree.map(
      lambda s: jax.random.normal(next(keys), tuple(min(d, cap) for d in s)),
      shapes, is_leaf=lambda x: isinstance(x, tuple))


def time_updates(opt: optax.GradientTransformation, params, rounds: int,
                 per_round: int) -> list[float]:
  """Milliseconds per un-jitted update, one figure per round."""
  grads = jax.tree.map(lambda x: 0.01 * x, params)
  state = opt.init(params)
  for _ in range(3):  # warm the eager op caches
    jax.block_until_ready(opt.update(grads, state, params))
  out = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(per_round):
      updates, state = opt.update(grads, state, params)
    jax.block_until_ready(updates)
    out.append((time.perf_counter() - t0) / per_round * 1e3)
  return out


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cap', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--per-round', type=int, default=5)
  parser.add_argument('--json', help='write the results here')
  args = parser.parse_args(argv)
  params = capped_tree(args.cap)
  opts = {'optax.lamb': optax.lamb(1e-3, weight_decay=1e-2),
          'lambc': optax_lambc.lambc(1e-3, weight_decay=1e-2)}
  times = {name: [] for name in opts}
  for _ in range(args.rounds):  # alternated, so drift hits both alike
    for name, opt in opts.items():
      times[name] += time_updates(opt, params, 1, args.per_round)
  med = {name: statistics.median(t) for name, t in times.items()}
  result = {
      'optax_lambc': optax_lambc.__version__,
      'optax_lambc_path': os.path.dirname(optax_lambc.__file__),
      'jax': jax.__version__, 'optax': optax.__version__,
      'machine': machine(), 'date': time.strftime('%Y-%m-%d'),
      'leaves': len(jax.tree.leaves(params)), 'cap': args.cap,
      'median_ms': med, 'range_ms': {n: (min(t), max(t)) for n, t in
                                     times.items()},
      'lambc_vs_optax_lamb': med['lambc'] / med['optax.lamb']}
  print(f"optax_lambc {result['optax_lambc']} ({result['optax_lambc_path']})"
        f", {result['machine']}, {result['date']}: un-jitted update on the "
        f"BERT-base tree ({result['leaves']} leaves, dims capped at "
        f'{args.cap}): optax.lamb {med["optax.lamb"]:.1f} ms, lambc '
        f'{med["lambc"]:.1f} ms ({result["lambc_vs_optax_lamb"]:.2f}x); '
        f'median of {args.rounds} rounds of {args.per_round}.')
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == '__main__':
  jnp.zeros(())  # initialise the backend before timing
  main()
