"""Tokens/s of a whole LM training step: AdamW vs LAMB vs LAMBC.

The examples' real training step (forward, backward, optimizer, metrics) of
the scanned transformer LM, on one fixed batch, compiled once per optimizer;
the optimizers alternate round by round in one process, and the medians are
reported as tokens/s and as ratios to AdamW and to ``optax.lamb``:

* ``adamw``: ``optax.adamw``;
* ``optax.lamb``: one trust ratio per *leaf* (all stacked blocks share one);
* ``lamb``: ``lambc(max_trust_ratio=None)`` with one ratio per block;
* ``lambc``: the clip at 1, one ratio per block;
* ``lambc+telemetry``: as ``lambc``, returning every layer's ratios from the
  step (what the examples log).

  python -m benchmarks.lm_tokens                       # transformer_tiny
  python -m benchmarks.lm_tokens --model transformer_small --batch 32 \\
      --seq-len 256
  python -m benchmarks.lm_tokens --tiny                # seconds (tests)
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import optax_lambc
from examples.configs import lm
from examples.lib import train as train_lib
from examples.lib.stats import machine


def optimizers(lr: float, wd: float, layer_axes) -> dict:
  return {
      'adamw': optax.adamw(lr, weight_decay=wd),
      'optax.lamb': optax.lamb(lr, weight_decay=wd),
      'lamb': optax_lambc.lambc(lr, weight_decay=wd, max_trust_ratio=None,
                                layer_axes=layer_axes),
      'lambc': optax_lambc.lambc(lr, weight_decay=wd, layer_axes=layer_axes),
  }


def bench(model: str, batch: int, seq_len: int, runs: int,
          steps_per_run: int) -> dict:
  config = lm().replace(model=model, seq_len=seq_len,
                        global_batch_size=batch, progress=False,
                        checkpoint_every_steps=0, eval_examples=batch)
  exp = train_lib.build(config)
  data = exp.parallel.shard_batch(exp.train_ds[0])
  steps, states, compile_s = {}, {}, {}
  for name, tx in optimizers(1e-3, 1e-2, exp.layer_axes).items():
    for telemetry in ((False, True) if name == 'lambc' else (False,)):
      label = name + ('+telemetry' if telemetry else '')
      state = train_lib.TrainState(exp.state.step, exp.state.params,
                                   exp.state.batch_stats,
                                   tx.init(exp.state.params))
      fn = train_lib.make_train_step(exp.task, exp.apply, tx, lambda _: 1e-3,
                                     telemetry=telemetry)
      t0 = time.perf_counter()
      steps[label] = jax.jit(fn, donate_argnums=0).lower(
          state, data).compile()
      compile_s[label] = time.perf_counter() - t0
      # Own buffers per optimizer: the step donates its state.
      states[label] = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
  times = {k: [] for k in steps}
  for _ in range(runs + 1):  # the first round warms up
    for label, step in steps.items():
      t0 = time.perf_counter()
      for _ in range(steps_per_run):
        states[label], metrics = step(states[label], data)
      jax.block_until_ready((states[label], metrics))
      times[label].append((time.perf_counter() - t0) / steps_per_run)
  tokens = batch * seq_len
  med = {k: statistics.median(v[1:]) for k, v in times.items()}
  rows = {k: {'median_ms': 1e3 * t, 'tokens_per_s': tokens / t,
              'vs_adamw': t / med['adamw'],
              'vs_optax_lamb': t / med['optax.lamb'],
              'compile_s': compile_s[k]} for k, t in med.items()}
  n_params = sum(x.size for x in jax.tree.leaves(exp.state.params))
  return {'model': model, 'params': int(n_params), 'batch': batch,
          'seq_len': seq_len, 'runs': runs, 'steps_per_run': steps_per_run,
          'machine': f'{machine()}, {jax.device_count()} '
                     f'{jax.devices()[0].platform} device(s), '
                     f'{jax.devices()[0].device_kind}',
          'jax': jax.__version__, 'optax': optax.__version__, 'rows': rows}


def print_result(r: dict) -> None:
  print(f"{r['model']} ({r['params']:,} params), batch {r['batch']} x "
        f"{r['seq_len']} bytes, {r['runs']} rounds x {r['steps_per_run']} "
        f"steps, {r['machine']}, jax {r['jax']}")
  print(f"{'optimizer':<18}{'ms/step':>9}{'tokens/s':>11}{'vs adamw':>10}"
        f"{'vs optax.lamb':>15}{'compile s':>11}")
  for k, row in r['rows'].items():
    print(f"{k:<18}{row['median_ms']:>9.1f}{row['tokens_per_s']:>11.0f}"
          f"{row['vs_adamw']:>10.3f}{row['vs_optax_lamb']:>15.3f}"
          f"{row['compile_s']:>11.1f}")


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='transformer_tiny')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--seq-len', type=int, default=64)
  parser.add_argument('--runs', type=int, default=15)
  parser.add_argument('--steps-per-run', type=int, default=5)
  parser.add_argument('--json', default=None, help='also write the result')
  parser.add_argument('--tiny', action='store_true',
                      help='seconds: batch 4 x 16, 2 rounds of 1 step')
  args = parser.parse_args(argv)
  if args.tiny:
    args.batch, args.seq_len, args.runs, args.steps_per_run = 4, 16, 2, 1
  result = bench(args.model, args.batch, args.seq_len, args.runs,
                 args.steps_per_run)
  print_result(result)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == '__main__':
  main()
