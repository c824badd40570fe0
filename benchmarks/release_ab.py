"""This release's jitted lambc step against another release's, in one process.

Both releases' ``lambc`` (clip at 1, telemetry returned from the step) are
compiled for the same tree, then their donated steps alternate run by run, so
machine drift hits both alike; medians and interquartile ranges are reported,
with the ratio to the other release. Lighter than ``step_time --baseline``
(two optimizers, one mode), so BERT-base fits in a small machine's memory.

  git worktree add ../v0.2 1feb27a
  python -m benchmarks.release_ab --baseline ../v0.2 --trees bert_base,resnet18
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import optax_lambc
from benchmarks import step_time
from examples.lib.stats import machine


def ab(tree: str, baseline, runs: int) -> dict:
  params0 = step_time.make_params(step_time.TREES[tree]())
  axes = step_time.STACKED.get(tree)
  layer_axes = (lambda p: {k: axes.get(k) for k in p}) if axes else None
  grads = jax.tree.map(lambda p: p * 0.1 + 0.01, params0)
  rows = {}
  for lib in (baseline, optax_lambc):
    opt = lib.lambc(1e-3, weight_decay=1e-2, max_trust_ratio=1.0,
                    layer_axes=layer_axes)
    step = step_time.make_step(opt, lib.trust_ratio_stats, donate=True)
    params = jax.tree.map(jnp.copy, params0)
    state = opt.init(params)
    compiled = step.lower(params, state, grads).compile()
    for _ in range(3):
      params, state, _ = compiled(params, state, grads)
    jax.block_until_ready(params)
    label = f"{lib.__version__} ({'baseline' if lib is baseline else 'this'})"
    rows[label] = [compiled, params, state, []]
  for _ in range(runs):
    for row in rows.values():
      compiled, params, state, times = row
      t0 = time.perf_counter()
      params, state, aux = compiled(params, state, grads)
      jax.block_until_ready((params, aux))
      times.append(time.perf_counter() - t0)
      row[1], row[2] = params, state
  base = statistics.median(next(iter(rows.values()))[3])  # the baseline
  return {version: {'median_ms': statistics.median(t) * 1e3,
                    'iqr_ms': [float(np.percentile(t, 25) * 1e3),
                               float(np.percentile(t, 75) * 1e3)],
                    'vs_baseline': statistics.median(t) / base}
          for version, (_, _, _, t) in rows.items()}


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--baseline', required=True, metavar='PATH',
                      help="another release's checkout")
  parser.add_argument('--trees', default='bert_base,bert_base_stacked,'
                                         'resnet18')
  parser.add_argument('--runs', type=int, default=40)
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  baseline = step_time.load_release(args.baseline)
  result = {'machine': machine(),
            'date': time.strftime('%Y-%m-%d'), 'jax': jax.__version__,
            'runs': args.runs, 'trees': {}}
  for tree in args.trees.split(','):
    rows = ab(tree, baseline, args.runs)
    result['trees'][tree] = rows
    print(f'{tree}: ' + '; '.join(
        f"{v} {r['median_ms']:.1f} ms (IQR {r['iqr_ms'][0]:.1f}–"
        f"{r['iqr_ms'][1]:.1f}), {r['vs_baseline']:.3f}x" for v, r in
        rows.items()), flush=True)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == '__main__':
  main()
