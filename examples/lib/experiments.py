"""Grids of training runs (settings x seeds): run, resume, tabulate, plot.

Shared by the offline demo and the paper-reproduction harness. Each run writes
its own workdir (``ROOT/SETTING/seed_N``) and a ``result.json`` when finished,
so an interrupted grid picks up where it stopped.
"""

import dataclasses
import json
import os
import statistics
from typing import Any

from examples.lib import plots
from examples.lib.config import Config
from examples.lib.train import train_and_evaluate


@dataclasses.dataclass(frozen=True)
class Setting:
  """One cell of a results table: config overrides, and where it goes."""

  row: str  # e.g. 'batch 1000'
  col: str  # e.g. 'max ratio 1'
  overrides: dict[str, Any]

  @property
  def name(self) -> str:
    text = f'{self.row}__{self.col}'
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
      out = train_and_evaluate(config, workdir)
      record = {'row': setting.row, 'col': setting.col, 'seed': seed,
                'workdir': workdir, 'steps': out['steps'],
                'accuracy': out['eval']['accuracy'],
                'loss': out['eval']['loss']}
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


def summarize(results: list[dict]) -> dict[tuple[str, str], tuple]:
  """(row, col) -> (mean, std, n) of the final test accuracy."""
  cells: dict[tuple[str, str], list[float]] = {}
  for r in results:
    cells.setdefault((r['row'], r['col']), []).append(r['accuracy'])
  return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0,
              len(v)) for k, v in cells.items()}


def markdown_table(results: list[dict], settings: list[Setting]) -> str:
  """Rows x columns of 'mean ± std' test accuracy (in %)."""
  summary = summarize(results)
  rows = list(dict.fromkeys(s.row for s in settings))
  cols = list(dict.fromkeys(s.col for s in settings))
  lines = ['| | ' + ' | '.join(cols) + ' |',
           '|---|' + '---|' * len(cols)]
  for row in rows:
    cells = []
    for col in cols:
      if (row, col) in summary:
        mean, std, n = summary[(row, col)]
        cells.append(f'{100 * mean:.2f} ± {100 * std:.2f} (n={n})')
      else:
        cells.append('–')
    lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def accuracy_curves(results: list[dict], row: str) -> dict[str, list]:
  """Test accuracy vs step per column of one row: ``(step, mean, min, max)``
  over seeds."""
  curves: dict[str, dict[int, list[float]]] = {}
  for r in results:
    if r['row'] != row:
      continue
    for rec in plots.read_metrics(r['workdir']):
      if rec['split'] == 'eval':
        curves.setdefault(r['col'], {}).setdefault(rec['step'], []).append(
            rec['accuracy'])
  return {col: sorted((step, statistics.mean(v), min(v), max(v))
                      for step, v in pts.items())
          for col, pts in curves.items()}


def write_report(results: list[dict], settings: list[Setting], root: str,
                 title: str, preamble: str = '') -> list[str]:
  """results.md (table) and one accuracy plot per row; returns the paths."""
  table = markdown_table(results, settings)
  paths = [os.path.join(root, 'results.md')]
  with open(paths[0], 'w') as f:
    f.write(f'# {title}\n\n{preamble}\n\nFinal test accuracy (%), mean ± std '
            f'over seeds.\n\n{table}\n')
  seeds = len({r['seed'] for r in results})
  for row in dict.fromkeys(s.row for s in settings):
    name = ''.join(c if c.isalnum() else '_' for c in row)
    paths.append(plots.plot_accuracy(
        accuracy_curves(results, row),
        os.path.join(root, f'accuracy_{name}.png'),
        title=f'{title}: {row}\nmean over {seeds} seed(s); band: min-max'))
  return paths
