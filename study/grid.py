"""Grids of training runs (settings x seeds): run, resume, tabulate, plot.

Shared by the offline demo (``study.demo``) and the paper-reproduction
harness (``study.reproduce``). Each run writes
its own workdir (``ROOT/SETTING/seed_N``) and a ``result.json`` when finished,
so an interrupted grid picks up where it stopped.
"""

import dataclasses
import json
import math
import os
import statistics
from typing import Any

from examples.lib import plots, stats
from examples.lib.config import Config
from examples.lib.metrics import NonFiniteError
from examples.lib.train import train_and_evaluate


@dataclasses.dataclass(frozen=True)
class Setting:
  """One cell of a results table: config overrides, and where it goes."""

  row: str  # e.g. 'batch 1000'
  col: str  # e.g. 'max ratio 1'
  overrides: dict[str, Any]
  dirname: str | None = None  # default: from row and col

  @property
  def name(self) -> str:
    text = self.dirname or f'{self.row}__{self.col}'
    return ''.join(c if c.isalnum() or c in '._-' else '_' for c in text)


def run_grid(base: Config, settings: list[Setting], seeds: list[int],
             root: str, progress: bool = True) -> list[dict]:
  """Runs every setting for every seed (skipping finished runs)."""
  os.makedirs(root, exist_ok=True)
  jobs = [(s, seed) for s in settings for seed in seeds]
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=len(jobs), unit='run', desc='runs', dynamic_ncols=True)
  results = []
  for setting, seed in jobs:
    workdir = os.path.join(root, setting.name, f'seed_{seed}')
    done = os.path.join(workdir, 'result.json')
    if os.path.exists(done):
      with open(done) as f:
        results.append(json.load(f))
    else:
      config = base.replace(**setting.overrides, seed=seed, progress=False)
      record = {'row': setting.row, 'col': setting.col, 'seed': seed,
                'workdir': workdir}
      try:
        out = train_and_evaluate(config, workdir)
        record.update(steps=out['steps'], diverged=False, **out['eval'])
        if 'data' in out:
          record['data'] = out['data']
      except NonFiniteError as e:  # a result too: this setting diverged
        record.update(steps=None, diverged=True, error=str(e),
                      accuracy=math.nan, loss=math.nan,
                      bits_per_byte=math.nan)
      with open(done, 'w') as f:
        json.dump(record, f)
      results.append(record)
    if bar is not None:
      bar.set_postfix_str(f"{setting.row}, {setting.col}, seed {seed}: "
                          f"{results[-1]['accuracy']:.3f}")
      bar.update(1)
  if bar is not None:
    bar.close()
  return results


def summarize(results: list[dict], key: str = 'accuracy'
              ) -> dict[tuple[str, str], tuple]:
  """(row, col) -> (mean, std, n, diverged) of a final eval metric; mean and
  std are over the seeds that did not diverge."""
  cells: dict[tuple[str, str], list[float]] = {}
  for r in results:
    cells.setdefault((r['row'], r['col']), []).append(r[key])
  out = {}
  for k, v in cells.items():
    ok = [x for x in v if math.isfinite(x)]
    out[k] = (statistics.mean(ok) if ok else math.nan,
              statistics.stdev(ok) if len(ok) > 1 else 0.0, len(v),
              len(v) - len(ok))
  return out


def markdown_table(results: list[dict], settings: list[Setting],
                   key: str = 'accuracy', scale: float = 100.0,
                   decimals: int = 2) -> str:
  """Rows x columns of 'mean ± std' of a final eval metric (default: test
  accuracy in %); runs that diverged are counted, not averaged."""
  summary = summarize(results, key)
  rows = list(dict.fromkeys(s.row for s in settings))
  cols = list(dict.fromkeys(s.col for s in settings))
  lines = ['| | ' + ' | '.join(cols) + ' |',
           '|---|' + '---|' * len(cols)]
  for row in rows:
    cells = []
    for col in cols:
      if (row, col) not in summary:
        cells.append('–')
        continue
      mean, std, n, diverged = summary[(row, col)]
      if diverged == n:
        cells.append(f'diverged (n={n})')
        continue
      cell = f'{scale * mean:.{decimals}f} ± {scale * std:.{decimals}f} (n={n}'
      cells.append(cell + (f', {diverged} diverged)' if diverged else ')'))
    lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def eval_curves(results: list[dict], row: str, key: str = 'accuracy',
                x_per_step: float = 1.0) -> dict[str, list]:
  """An eval metric vs step (times ``x_per_step``) per column of one row:
  ``(x, mean, min, max)`` over seeds."""
  curves: dict[str, dict[int, list[float]]] = {}
  for r in results:
    if r['row'] != row:
      continue
    for rec in plots.read_metrics(r['workdir']):
      if rec['split'] == 'eval':
        curves.setdefault(r['col'], {}).setdefault(rec['step'], []).append(
            rec[key])
  return {col: sorted((step * x_per_step, statistics.mean(v), min(v), max(v))
                      for step, v in pts.items())
          for col, pts in curves.items()}


def paired_table(results: list[dict], settings: list[Setting],
                 baseline: str, key: str = 'accuracy', scale: float = 100.0,
                 decimals: int = 2) -> str:
  """Rows x columns of each column's difference from the ``baseline``
  column, paired by seed: mean ± the 95 % Student-t half-width (a diverged
  run leaves its seed out)."""
  by: dict[tuple[str, str], dict[int, float]] = {}
  for r in results:
    by.setdefault((r['row'], r['col']), {})[r['seed']] = r[key]
  rows = list(dict.fromkeys(s.row for s in settings))
  cols = [c for c in dict.fromkeys(s.col for s in settings) if c != baseline]
  lines = ['| | ' + ' | '.join(f'{c} − {baseline}' for c in cols) + ' |',
           '|---|' + '---|' * len(cols)]
  for row in rows:
    cells = []
    for col in cols:
      mean, half, n = stats.paired_interval(by.get((row, col), {}),
                                            by.get((row, baseline), {}))
      if n < 2:
        cells.append(f'– (n={n})')
        continue
      if mean == 0 and half == 0:
        cells.append(f'identical (n={n})')  # e.g. a bound that never binds
        continue
      lo, hi = scale * (mean - half), scale * (mean + half)
      tie = ' tie' if lo <= 0 <= hi else ''
      cells.append(f'{scale * mean:+.{decimals}f} ± {scale * half:.{decimals}f}'
                   f' (n={n}){tie}')
    lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write_report(results: list[dict], settings: list[Setting], root: str,
                 title: str, preamble: str = '',
                 baseline: str | None = None) -> list[str]:
  """results.md (table; with ``baseline``, also each column's paired
  difference from that column) and one accuracy plot per row; returns the
  paths."""
  table = markdown_table(results, settings)
  paths = [os.path.join(root, 'results.md')]
  with open(paths[0], 'w') as f:
    f.write(f'# {title}\n\n{preamble}\n\nFinal test accuracy (%), mean ± std '
            f'over seeds.\n\n{table}\n')
    if baseline is not None:
      f.write(f'\nDifference from {baseline} in points, paired by seed: mean '
              '± the 95 % t interval\'s half-width; "tie" where the interval '
              f'contains 0.\n\n{paired_table(results, settings, baseline)}\n')
  seeds = len({r['seed'] for r in results})
  for row in dict.fromkeys(s.row for s in settings):
    name = ''.join(c if c.isalnum() else '_' for c in row)
    paths.append(plots.plot_curves(
        eval_curves(results, row),
        os.path.join(root, f'accuracy_{name}.png'),
        title=f'{title}: {row}\nmean over {seeds} seed(s); band: min-max'))
  return paths
