"""Plots from metrics.jsonl: accuracy curves and trust-ratio heat-maps."""

import json
import os
import re

import numpy as np

from examples.lib import jsonl


def read_metrics(workdir: str) -> list[dict]:
  """The records of ``WORKDIR/metrics.jsonl``, non-finite values as floats."""
  return jsonl.read(os.path.join(workdir, 'metrics.jsonl'))


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def trust_ratio_matrix(records: list[dict], field: str = 'raw'):
  """(layers, steps, matrix[layer, step]) of one telemetry field; a stacked
  leaf contributes one row per stacked layer."""
  train = [r for r in records if r['split'] == 'train']
  prefix = f'trust_ratio/{field}/'
  # One row per layer; a stacked leaf's slices ('blocks/fc1/kernel[3]') in
  # numeric order.
  natural = lambda name: [int(t) if t.isdigit() else t
                          for t in re.split(r'(\d+)', name)]
  layers = sorted({k[len(prefix):] for r in train for k in r
                   if k.startswith(prefix)}, key=natural)
  steps = [r['step'] for r in train]
  matrix = np.array([[r.get(prefix + name, np.nan) for r in train]
                     for name in layers], dtype=float)
  return layers, steps, matrix


def _save(plt, fig, ax, out, title, xlabel, ylabel) -> str:
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


_STYLES = [('-', 'o'), ('--', 's'), ('-.', '^'), (':', 'D'), ('-', 'v'),
           ('--', 'P')]


def plot_curves(curves: dict[str, list[tuple[float, ...]]], out: str,
                title: str = '', xlabel: str = 'step',
                ylabel: str = 'test accuracy',
                log_y: bool = False, log_x: bool = False,
                spans: dict[str, tuple[float, float]] | None = None) -> str:
  """One line per label, every point shown.

  ``curves[label]`` is ``[(x, y), ...]``, or ``[(x, mean, lo, hi), ...]`` for
  a mean over seeds drawn with a shaded ``[lo, hi]`` band. Every line has its
  own style and its own markers (staggered, hollow and larger for each
  later line), so curves that coincide stay distinguishable. The axes cover
  every point. ``log_y`` / ``log_x``: logarithmic axes (non-positive values
  dropped). ``spans``: ``{label: (x0, x1)}``, ranges of x shaded behind the
  lines (each its own hatch, so overlapping ones stay readable).
  """
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for i, (label, (x0, x1)) in enumerate((spans or {}).items()):
    ax.axvspan(x0, x1, facecolor=f'{0.9 - 0.08 * i:.2f}', alpha=0.6,
               hatch=('', '//', '\\\\')[i % 3], edgecolor='0.35',
               linewidth=1.0, linestyle=('-', '--', ':')[i % 3],
               label=label, zorder=0)
  for i, (label, points) in enumerate(curves.items()):
    points = [p for p in points if np.isfinite(p[1]) and
              (p[1] > 0 or not log_y)]
    if not points:
      continue
    cols = list(zip(*points, strict=True))
    x, y = np.asarray(cols[0]), np.asarray(cols[1])
    style, marker = _STYLES[i % len(_STYLES)]
    every = max(1, len(x) // 8)
    # Staggered markers, and hollow ones growing with i: where curves
    # coincide, their markers nest instead of hiding each other.
    line, = ax.plot(x, y, style, marker=marker, markersize=4 + 2.5 * i,
                    fillstyle='full' if i == 0 else 'none', label=label,
                    linewidth=1.4, markevery=(i * every // max(
                        1, len(curves)) % every, every))
    if len(cols) == 4:
      ax.fill_between(x, np.asarray(cols[2]), np.asarray(cols[3]),
                      color=line.get_color(), alpha=0.15, linewidth=0)
  if log_x:
    ax.set_xscale('log')
  if log_y:
    ax.set_yscale('log')
  return _save(plt, fig, ax, out, title, xlabel, ylabel)


def clipped_cells(records: list[dict]) -> np.ndarray:
  """``[layer, step]``: where the applied ratio is not the raw one."""
  _, _, raw = trust_ratio_matrix(records, 'raw')
  _, _, applied = trust_ratio_matrix(records, 'applied')
  with np.errstate(invalid='ignore'):
    return np.abs(applied - raw) > 1e-6 * np.abs(raw)


def clip_summary(records: list[dict]) -> str:
  """How often the bound clipped a run's logged ratios, in a few words."""
  clipped = clipped_cells(records)
  if clipped.any():
    return f'clip bound: {clipped.mean():.0%} of cells'
  _, _, upper = trust_ratio_matrix(records, 'upper')
  if upper.size and np.all(np.isposinf(upper)):
    return 'no upper bound'
  return 'the clip never bound'


def plot_trust_ratio_heatmaps(panels: dict[str, list[dict]], out: str,
                              field: str = 'raw', title: str = '',
                              mark_clipped: bool = False) -> str:
  """Side-by-side layer x step heat-maps (one per run) of log10 of a
  trust-ratio field, on one colour scale; one row per (stacked) layer.

  ``mark_clipped`` draws an ``x`` on every cell where the applied ratio
  differs from the raw one (the clip bound), and says in the panel title
  when the bound never did.
  """
  plt = _plt()
  mats = {label: trust_ratio_matrix(records, field)
          for label, records in panels.items()}
  with np.errstate(divide='ignore', invalid='ignore'):
    logs = {k: np.log10(m) for k, (_, _, m) in mats.items()}
  finite = np.concatenate([v[np.isfinite(v)] for v in logs.values()])
  vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size \
      else (None, None)
  n_layers = max(len(layers) for layers, _, _ in mats.values())
  fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=True,
                           figsize=(4.5 * len(panels) + 2.5,
                                    0.17 * n_layers + 2.0))
  image = None
  for ax, (label, (layers, steps, _)) in zip(axes[0], mats.items(),
                                              strict=True):
    # Each column centred on its step (half a log interval either side).
    half = (steps[-1] - steps[0]) / (2 * (len(steps) - 1)) if len(
        steps) > 1 else 0.5
    image = ax.imshow(logs[label], aspect='auto', cmap='viridis',
                      interpolation='nearest', vmin=vmin, vmax=vmax,
                      extent=(steps[0] - half, steps[-1] + half,
                              len(layers) - 0.5, -0.5))
    ax.set_yticks(range(len(layers)), layers, fontsize=6)
    ax.set_xlabel('step')
    heading = label or f'log10 {field} trust ratio per layer'
    if mark_clipped:
      rows, cols = np.nonzero(clipped_cells(panels[label]))
      ax.scatter(np.asarray(steps)[cols], rows, marker='x', s=6,
                 color='red', linewidths=0.6)
      heading += '\n' + clip_summary(panels[label])
    ax.set_title(heading, fontsize=9)
  if title:
    height = fig.get_size_inches()[1]
    fig.subplots_adjust(top=1 - 0.8 / height)  # room for two title lines
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va='top')
  fig.colorbar(image, ax=list(axes[0]), label=f'log10 {field} trust ratio')
  fig.savefig(out, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return out


def plot_raw_vs_applied(records: list[dict], out: str, max_layers: int = 8,
                        title: str = '') -> str:
  """Raw (dashed) and applied (solid) ratio per layer over steps."""
  plt = _plt()
  layers, steps, raw = trust_ratio_matrix(records, 'raw')
  _, _, applied = trust_ratio_matrix(records, 'applied')
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for i, name in enumerate(layers[:max_layers]):
    line, = ax.plot(steps, applied[i], label=name)
    ax.plot(steps, raw[i], '--', color=line.get_color(), alpha=0.6)
  ax.set_yscale('log')
  return _save(plt, fig, ax, out, title, 'step',
               'trust ratio (dashed: raw, solid: applied)')


def run_title(workdir: str) -> tuple[str, str]:
  """``(title, eval split)`` of a run, from its ``config.json`` if present."""
  name = os.path.basename(os.path.abspath(workdir))
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return name, 'eval'
  with open(path) as f:
    c = json.load(f)
  bound = ('' if c['optimizer'] not in ('lambc', 'larc') else
           f", max ratio {c['max_trust_ratio']}")
  return (f"{name}: {c['model']} on {c['dataset']}, {c['optimizer']}{bound}"
          f", lr {c['learning_rate']:g}, batch {c['global_batch_size']}",
          c['eval_split'])


def plot_run(workdir: str) -> list[str]:
  """Learning curves and trust-ratio heat-maps for one training run:
  ``loss.png``, and ``accuracy.png`` for a classifier or
  ``bits_per_byte.png`` for a language model, train and eval curves with
  every logged point; ``trust_ratio_raw.png`` marks the cells where the clip
  bound. Training writes them at the end of a run and on a stop."""
  records = read_metrics(workdir)
  lm = any('bits_per_byte' in r for r in records)
  title, split = run_title(workdir)
  outs = []
  for key in ('loss', 'bits_per_byte' if lm else 'accuracy'):
    curves = {
        'train split (mean over each log interval)': [
            (r['step'], r[key]) for r in records if r['split'] == 'train'
            and key in r],
        f'{split} split': [(r['step'], r[key]) for r in records
                           if r['split'] == 'eval' and key in r]}
    outs.append(plot_curves(curves, os.path.join(workdir, f'{key}.png'),
                            title=title, ylabel=key.replace('_', ' ')))
  if any(k.startswith('trust_ratio/raw/') for r in records for k in r):
    for field in ('raw', 'applied'):
      outs.append(plot_trust_ratio_heatmaps(
          {'': records}, os.path.join(workdir, f'trust_ratio_{field}.png'),
          field, title=title, mark_clipped=field == 'raw'))
  return outs
