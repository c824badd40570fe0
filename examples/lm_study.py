"""Does LAMBC hold a large batch where AdamW and LAMB do not? (A byte-level
transformer LM on the offline standard-library corpus.)

  python -m examples.reproduce --experiment lm_batch [--workdir docs/lm]
  python -m examples.reproduce --experiment lm_batch --tiny   # seconds

AdamW, LAMB, LAMBC (max ratio 1) and LAMBC with ``running_stat_bounds`` train
``transformer_tiny`` (4 scanned blocks of width 64, 0.2M params, 64-byte
sequences) at global batch sizes 16, 64 and 256 sequences for the same token
budget (768 / 192 / 48 optimizer steps), batches above 64 by gradient
accumulation over micro-batches of 64. Learning rates, fairly per optimizer:
a sweep at the smallest batch (seed 0, scored on the validation split), then
the square-root scaling of the LAMB paper, ``lr(B) = lr(16) * sqrt(B / 16)``.
Every run warms up linearly for 10 % of its steps, then decays by a cosine.
The table reports the test split's bits per byte (mean ± std over seeds);
runs that diverge are counted. Writes ``results.md``, ``results.json``,
curves per batch size and the per-layer trust-ratio heat-maps of the
layer-wise optimizers at the largest batch. Finished runs are skipped, so an
interrupted study resumes.
"""

import json
import math
import os
import platform
import time

import jax

from examples.configs import lm
from examples.lib import config as config_lib
from examples.lib import experiments, plots
from examples.lib.experiments import Setting

BATCHES = (16, 64, 256)
MICRO_BATCH = 64  # larger batches accumulate micro-batches of this size
TOKENS = 3 * 2 ** 18  # 786,432 training bytes per run
LAMB_LRS = (1e-2, 3e-2, 1e-1)
OPTIMIZERS = {  # column -> (overrides, learning rates swept)
    'AdamW': ({'optimizer': 'adamw'}, (1e-3, 3e-3, 1e-2)),
    'LAMB': ({'optimizer': 'lamb', 'max_trust_ratio': None}, LAMB_LRS),
    'LAMBC max 1': ({'optimizer': 'lambc', 'max_trust_ratio': 1.0},
                    LAMB_LRS),
    'LAMBC running_stat_bounds': (
        {'optimizer': 'lambc', 'bound_policy': 'running',
         'max_trust_ratio': None}, LAMB_LRS),
}
# The LAMBC paper's convention (as the digits demo): every layer is adapted
# and decayed, so the clip acts on LayerNorm scales and biases too.
BASE = {'exclude_bias_and_norm': False, 'warmup_fraction': 0.1,
        'weight_decay': 0.01, 'checkpoint_every_steps': 0,
        'eval_examples': 1024}
TINY = {'batches': (4, 8), 'tokens': 4 * 8 * 16, 'micro_batch': 4,
        'lrs': 1, 'overrides': {'seq_len': 16, 'eval_examples': 32}}


def _steps(batch: int, tokens: int, seq_len: int) -> int:
  return max(1, tokens // (batch * seq_len))


def _run_overrides(batch: int, tokens: int, seq_len: int, micro: int) -> dict:
  steps = _steps(batch, tokens, seq_len)
  return {'global_batch_size': batch, 'accum_steps': max(1, batch // micro),
          'num_train_steps': steps,
          'eval_every_steps': max(1, steps // 8),
          'log_every_steps': max(1, steps // 32)}


def sweep_settings(batch: int, tokens: int, seq_len: int, micro: int,
                   n_lrs: int | None = None) -> list[Setting]:
  """The learning-rate sweep at the smallest batch (validation split)."""
  run = _run_overrides(batch, tokens, seq_len, micro)
  return [Setting(f'sweep, batch {batch}', f'{col} lr {lr:g}',
                  {**ov, **run, 'learning_rate': lr,
                   'eval_split': 'validation'})
          for col, (ov, lrs) in OPTIMIZERS.items() for lr in lrs[:n_lrs]]


def best_learning_rates(results: list[dict]) -> dict[str, float]:
  """Per optimizer, the swept rate with the lowest validation bits/byte
  (a diverged run scores +inf)."""
  best: dict[str, tuple[float, float]] = {}
  for r in results:
    col, _, lr = r['col'].rpartition(' lr ')
    score = r['bits_per_byte']
    score = score if math.isfinite(score) else math.inf
    if col not in best or score < best[col][0]:
      best[col] = (score, float(lr))
  return {col: lr for col, (_, lr) in best.items()}


def main_settings(best_lr: dict[str, float], batches, tokens: int,
                  seq_len: int, micro: int) -> list[Setting]:
  out = []
  for batch in batches:
    for col, (ov, _) in OPTIMIZERS.items():
      lr = best_lr[col] * math.sqrt(batch / batches[0])
      out.append(Setting(f'batch {batch}', col, {
          **ov, **_run_overrides(batch, tokens, seq_len, micro),
          'learning_rate': lr, 'eval_split': 'test'}))
  return out


def _sweep_table(results: list[dict], best: dict[str, float]) -> str:
  lrs = {}
  for r in results:
    col, _, lr = r['col'].rpartition(' lr ')
    bpb = r['bits_per_byte']
    mark = ' **(chosen)**' if float(lr) == best[col] else ''
    lrs.setdefault(col, []).append(
        f'{lr}: {bpb:.3f}{mark}' if math.isfinite(bpb) else
        f'{lr}: diverged')
  return '\n'.join(f'| {col} | ' + ', '.join(v) + ' |'
                   for col, v in lrs.items())


def run(workdir: str, seeds: list[int], overrides: list[str],
        tiny: bool = False) -> list[str]:
  """Runs the sweep and the grid; writes the report; returns its paths."""
  t0 = time.time()
  batches, tokens, micro, n_lrs = BATCHES, TOKENS, MICRO_BATCH, None
  base = lm().replace(**BASE)
  if tiny:
    batches, tokens, micro = TINY['batches'], TINY['tokens'], \
        TINY['micro_batch']
    n_lrs, base = TINY['lrs'], base.replace(**TINY['overrides'])
  base = config_lib.apply_overrides(base, overrides)
  sweep = sweep_settings(batches[0], tokens, base.seq_len, micro, n_lrs)
  sweep_results = experiments.run_grid(base, sweep, seeds[:1],
                                       os.path.join(workdir, 'sweep'))
  best = best_learning_rates(sweep_results)
  grid = main_settings(best, batches, tokens, base.seq_len, micro)
  results = experiments.run_grid(base, grid, seeds, workdir)
  wall = time.time() - t0
  return write_report(workdir, base, grid, results, sweep_results, best,
                      seeds, batches, tokens, micro, tiny, wall)


def write_report(workdir, base, grid, results, sweep_results, best, seeds,
                 batches, tokens, micro, tiny, wall) -> list[str]:
  fingerprint = next((r['data'] for r in results if 'data' in r), {})
  table = experiments.markdown_table(results, grid, key='bits_per_byte',
                                     scale=1.0, decimals=3)
  seed_list = ','.join(map(str, seeds))
  command = (f'python -m examples.reproduce --experiment lm_batch'
             f'{" --tiny" if tiny else ""} --seeds {seed_list} '
             f'--workdir {workdir}')
  machine = (f'{platform.machine()}, {os.cpu_count()} CPU cores, '
             f'{jax.devices()[0].platform}; jax {jax.__version__}')
  corpus = json.dumps(fingerprint, sort_keys=True)
  steps = {b: _steps(b, tokens, base.seq_len) for b in batches}
  schedule = ', '.join(f'batch {b}: {s} steps' for b, s in steps.items())
  b0 = batches[0]
  chosen = ', '.join(f'{col} {lr:g}' for col, lr in best.items())
  lines = [
      f'# Large batches on a byte-level transformer LM'
      f'{" (tiny mode)" if tiny else ""}', '',
      f'Command: `{command}`', '',
      f'- Model: `{base.model}` ({base.seq_len}-byte sequences), '
      f'{tokens:,} training bytes per run: {schedule}; batches above '
      f'{micro} accumulate micro-batches of {micro}.',
      f'- Learning rate: swept at batch {b0} (seed {seeds[0]}, validation '
      f'split), then `lr(B) = lr({b0}) * sqrt(B / {b0})`; chosen lr({b0}): '
      f'{chosen}. Warm-up {base.warmup_fraction:.0%} of the steps, then '
      f'cosine decay; weight decay {base.weight_decay:g}; every layer '
      'adapted and decayed (the LAMBC paper\'s convention).',
      f'- Seeds: {seeds} (model init and data order).',
      f'- Corpus: `{corpus}`',
      f'- Machine: {machine}. Wall time of this invocation: '
      f'{wall / 60:.1f} min.', '',
      '## Test bits per byte (lower is better), mean ± std over seeds', '',
      table, '',
      f'## Learning-rate sweep (validation bits per byte, batch {b0}, seed '
      f'{seeds[0]})', '',
      '| optimizer | lr: bits/byte |', '|---|---|',
      _sweep_table(sweep_results, best), '']
  text = '\n'.join(lines)
  paths = [os.path.join(workdir, 'results.md')]
  with open(paths[0], 'w') as f:
    f.write(text)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'command': command, 'seeds': seeds, 'corpus': fingerprint,
               'machine': machine, 'wall_s': wall, 'best_lr': best,
               'tokens': tokens, 'results': results,
               'sweep': sweep_results}, f, indent=1)
  for batch in batches:
    row = f'batch {batch}'
    paths.append(plots.plot_curves(
        experiments.eval_curves(results, row, 'bits_per_byte',
                                x_per_step=batch * base.seq_len / 1e6),
        os.path.join(workdir, f'bits_per_byte_batch_{batch}.png'),
        title=f'Test bits/byte, {row} ({steps[batch]} steps)\n'
              f'mean over {len(seeds)} seeds; band: min-max',
        xlabel='training bytes (millions)', ylabel='test bits per byte',
        higher_is_better=False))
  largest = f'batch {batches[-1]}'
  panels = {}
  for col in ('LAMB', 'LAMBC max 1', 'LAMBC running_stat_bounds'):
    run_ = next(r for r in results if r['row'] == largest and r['col'] == col
                and r['seed'] == seeds[0])
    if not run_['diverged']:
      panels[col] = plots.read_metrics(run_['workdir'])
  if panels:
    paths.append(plots.plot_trust_ratio_heatmaps(
        panels, os.path.join(workdir, f'trust_ratio_batch_{batches[-1]}.png'),
        field='applied',
        title=f'Applied trust ratio per layer, {largest}, seed {seeds[0]}'))
  return paths
