"""The LM large-batch study's report: tables with intervals, curves, verdict.

``write(root, study)`` turns the ledger's runs (``study.lm``) into
``results.md``, ``results.json`` and figures. Intervals are Student-t 95 %
intervals over seeds; differences between optimizers are paired by seed.
"""

import dataclasses
import json
import math
import os
import statistics
import time

from examples.lib import plots, stats
from examples.lib.config import Config
from study import lm
from study.lm import PRIMARY

@dataclasses.dataclass
class Study:
  base: Config
  plan: object  # study.lm.Plan
  noise_run: dict
  noise: float
  batches: tuple[int, ...]
  tuned: dict[tuple[str, int], float]
  tuning: list[dict]
  finals: list[dict]
  tiny: bool
  ledger: str


def paired(finals: list[dict], a: str, b: str, batch: int
           ) -> tuple[float, float, int]:
  """The 95 % interval of ``a - b`` in test bits/byte, paired by seed."""
  by = {o: {r['seed']: r['test_bpb'] for r in finals
            if r['batch'] == batch and r['optimizer'] == o} for o in (a, b)}
  return stats.paired_interval(by[a], by[b])


def _fmt(mean: float, half: float, n: int, digits: int = 3) -> str:
  if n == 0:
    return 'diverged'
  if not math.isfinite(half):
    return f'{mean:.{digits}f} (n={n})'
  return f'{mean:.{digits}f} ± {half:.{digits}f} (n={n})'


def target_bpb(study: Study) -> float:
  """The validation target: the worst tuned cell's final sampled validation
  bits/byte, rounded up to 0.01, so every tuned cell reached it."""
  worst = 0.0
  for (opt, batch), lr in study.tuned.items():
    rec = next(r for r in study.tuning if r['optimizer'] == opt and
               r['batch'] == batch and r['lr'] == lr)
    worst = max(worst, rec['curve'][-1][1])
  return math.ceil(worst * 100) / 100


def bytes_to_target(record: dict, target: float, seq_len: int) -> float:
  """Training bytes until the sampled validation loss first reached the
  target (inf if never)."""
  for step, bpb in record['curve']:
    if bpb <= target:
      return step * record['batch'] * seq_len
  return math.inf


def _raw_ratios(record: dict):
  """``(parameter path, raw ratio)`` of every finite logged raw ratio; a
  stacked leaf's slices share their leaf's path."""
  prefix = 'trust_ratio/raw/'
  for row in record.get('telemetry', ()):
    for k, v in row.items():
      if k.startswith(prefix) and math.isfinite(v):
        yield k.removeprefix(prefix).split('[', 1)[0], v


def above_one(record: dict) -> float:
  """Share of the logged (step, layer) raw trust ratios above 1 in a run's
  telemetry: where a bound of 1 binds (LAMBC) or would bind (LAMB)."""
  above = [v > 1 for _, v in _raw_ratios(record)]
  return sum(above) / len(above) if above else math.nan


def above_one_by_path(record: dict) -> dict[str, float]:
  """:func:`above_one` per parameter (a stacked leaf's slices together),
  for the parameters with any ratio above 1, largest share first."""
  above: dict[str, list[bool]] = {}
  for path, v in _raw_ratios(record):
    above.setdefault(path, []).append(v > 1)
  shares = {p: sum(a) / len(a) for p, a in above.items() if any(a)}
  return dict(sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])))


def _machine(study: Study) -> str:
  cpus = sorted({f"{r['cpu']} ({r['cores']} cores)" for r in
                 [study.noise_run, *study.tuning, *study.finals]})
  return '; '.join(cpus)


def _corpus(study: Study) -> dict | None:
  return next((r['data'] for r in study.finals if r.get('data')), None)


def _versions() -> str:
  return ', '.join(f"{'Python' if k == 'python' else k} {v}" for k, v in
                   lm.versions().items())


def _figures(root: str, study: Study, seq_len: int) -> list[str]:
  paths = []
  noise = [(s * study.noise_run['batch'] * seq_len / 1e6, b)
           for s, b in study.noise_run['noise']]
  curves = {'B_simple per log interval': noise}
  for b in study.batches:
    curves[f'batch {b}'] = [(noise[0][0], b), (noise[-1][0], b)]
  paths.append(plots.plot_curves(
      curves, os.path.join(root, 'noise_scale.png'),
      title=f"Gradient noise scale along a LAMB run (batch "
            f"{study.noise_run['batch']}, micro-batches of "
            f"{study.plan.noise_micro_batch})\nmedian over the middle half: "
            f'{study.noise:.1f} sequences; flat lines: the studied batches',
      xlabel='training bytes (millions)',
      ylabel=f'B_simple (sequences of {seq_len} bytes)', log_y=True))
  for batch in study.batches:
    curves = {}
    for opt in study.plan.optimizers:
      runs = [r for r in study.finals if r['optimizer'] == opt and
              r['batch'] == batch and not r['diverged']]
      if not runs:
        continue
      pts = {}
      for r in runs:
        for step, bpb in r['curve']:
          pts.setdefault(step, []).append(bpb)
      curves[f"{opt} (lr {study.tuned[opt, batch]:.3g})"] = [
          (s * batch * seq_len / 1e6, statistics.mean(v), min(v), max(v))
          for s, v in sorted(pts.items())]
    paths.append(plots.plot_curves(
        curves, os.path.join(root, f'validation_batch_{batch}.png'),
        title=f'Validation bits/byte (fixed 1024-window sample), batch '
              f'{batch}\nmean over {len(study.plan.final_seeds)} seeds; '
              'band: min-max',
        xlabel='training bytes (millions)',
        ylabel='validation bits per byte'))
  largest = study.batches[-1]
  panels = {}
  for r in study.finals:
    if r['batch'] == largest and r.get('telemetry'):
      panels[f"{r['optimizer']} (seed {r['seed']})"] = [
          {**row, 'split': 'train'} for row in r['telemetry']]
  if panels:
    paths.append(plots.plot_trust_ratio_heatmaps(
        panels, os.path.join(root, f'trust_ratio_batch_{largest}.png'),
        field='raw', mark_clipped=True,
        title=f'Raw trust ratio per layer, batch {largest}; x: the clip '
              'bound (applied ≠ raw)'))
  return paths


def _header(study: Study) -> list[str]:
  base, plan = study.base, study.plan
  return [
      f'# Large batches on a byte-level transformer LM'
      f'{" (tiny mode)" if study.tiny else ""}', '',
      'Command: `python -m study.reproduce --experiment lm_batch'
      f'{" --tiny" if study.tiny else ""}` (resumes from the ledger '
      f'`{study.ledger}`; the design and the primary comparison were fixed '
      'before the runs in `PLAN.md`).', '',
      f'- Machine(s): {_machine(study)}; {_versions()}; XLA_FLAGS='
      f"`{os.environ.get('XLA_FLAGS', '')}`. Report written "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
      f'- Corpus: `{json.dumps(_corpus(study), sort_keys=True)}`',
      f'- Model `{base.model}`, {base.seq_len}-byte sequences, '
      f'{plan.tokens:,} training bytes per run; Adam ε {base.adam_eps:g} for '
      f'every optimizer; weight decay {base.weight_decay:g}; warm-up '
      f'{base.warmup_fraction:.0%} of the steps, then cosine decay; every '
      'layer adapted and decayed (the LAMBC paper\'s convention).', '']


def _batches_section(study: Study) -> list[str]:
  seq_len = study.base.seq_len
  return [
      '## The batches, from the gradient noise scale', '',
      f"One LAMB run at batch {study.noise_run['batch']} (micro-batches of "
      f'{study.plan.noise_micro_batch}) logged B_simple (McCandlish et al. '
      '2018). Its median over the middle half of training (steps 25–75 %; it '
      f'grows without bound as the cosine decays) is **{study.noise:.1f} '
      f'sequences** ({study.noise * seq_len:,.0f} bytes). The studied '
      f'batches are {", ".join(map(str, study.batches))} sequences: '
      + ', '.join(f'{bb / study.noise:.2g}×' for bb in study.batches) +
      ' the noise scale. Figure: `noise_scale.png`.', '',
      *_original_rule(study)]


def _first_flip(noise: float) -> float:
  """The B* below which the batches chosen for ``noise`` change."""
  lo, hi = 0.0, noise
  for _ in range(60):  # bisection on a step function
    mid = (lo + hi) / 2
    lo, hi = (lo, mid) if lm.choose_batches(mid) == lm.choose_batches(
        noise) else (mid, hi)
  return hi


def _original_rule(study: Study) -> list[str]:
  """What the plan's first rule would have chosen, and why it was not."""
  original = lm.noise_scale_summary(study.noise_run,
                                    lm.ORIGINAL_NOISE_WINDOW)
  flip = _first_flip(study.noise)
  return [
      'The plan first fixed the median over the second half of the run. '
      f'That window gives B* = {original:.1f} and batches '
      f'{"/".join(map(str, lm.choose_batches(original)))} instead. The rule '
      'was amended (PLAN.md, amendment 1) after this run was seen and before '
      'any batch was chosen: over the second half B_simple rises from about '
      '17 to 1,700 as the cosine schedule shrinks the gradient towards its '
      'noise, so that median follows the schedule\'s end more than the '
      'training. Under the amended rule the batches also hang on one run: '
      f'any B* below {flip:.1f} would have given batches '
      f'{"/".join(map(str, lm.choose_batches(flip * 0.999)))}. '
      'Round 2 measures the noise scale over three seeds, with an interval '
      '(`docs/lm/round2/results.md`).', '']


def _tuning_section(study: Study) -> list[str]:
  lines = [
      '## Learning rates, tuned per (optimizer, batch)', '',
      'Factor-2 grid around `lr(16) * sqrt(B / 16)` (0.2\'s batch-16 picks), '
      f'extended while the best sat at an edge; seed {study.tuning[0]["seed"]}'
      ', scored on the whole validation split (bits/byte; chosen in bold).',
      '', '| optimizer | batch | lr: validation bits/byte |', '|---|---|---|']
  for (opt, batch), lr in study.tuned.items():
    cells = []
    for r in sorted((r for r in study.tuning if r['optimizer'] == opt and
                     r['batch'] == batch), key=lambda r: r['lr']):
      v = r['validation_bpb']
      text = f"{r['lr']:.3g}: " + (f'{v:.3f}' if math.isfinite(v) else
                                   'diverged')
      cells.append(f'**{text}**' if r['lr'] == lr else text)
    lines.append(f'| {opt} | {batch} | ' + ', '.join(cells) + ' |')
  return lines


def _test_section(study: Study) -> tuple[list[str], dict]:
  """The test bits/byte table, and its cells for ``results.json``."""
  optimizers, seq_len = study.plan.optimizers, study.base.seq_len
  lines = ['', '## Test bits per byte (whole test split; mean ± 95 % '
           'interval)', '', '| batch | steps | ' + ' | '.join(optimizers) +
           ' |', '|---|---|' + '---|' * len(optimizers)]
  summary = {}
  for batch in study.batches:
    cells = []
    for opt in optimizers:
      vals = [r['test_bpb'] for r in study.finals if r['optimizer'] == opt
              and r['batch'] == batch]
      summary[f'{opt} @ {batch}'] = cell = stats.t_interval(vals)
      diverged = sum(not math.isfinite(v) for v in vals)
      cells.append(_fmt(*cell) + (f', {diverged} diverged' if diverged
                                  else ''))
    n_steps = study.plan.tokens // (batch * seq_len)
    lines.append(f'| {batch} | {n_steps} | ' + ' | '.join(cells) + ' |')
  return lines, summary


def _pairs_section(study: Study) -> list[str]:
  optimizers, largest = study.plan.optimizers, study.batches[-1]
  pairs = [(o1, o2) for o1, o2 in (PRIMARY, ('LAMBC max 1', 'AdamW'),
                                   ('LAMB', 'AdamW'))
           if o1 in optimizers and o2 in optimizers]
  lines = ['', '## Paired differences in test bits/byte (negative: the '
           'first is better)', '',
           '| batch | ' + ' | '.join(f'{x} − {y}' for x, y in pairs) + ' |',
           '|---|' + '---|' * len(pairs)]
  for batch in study.batches:
    cells = []
    for x, y in pairs:
      m, h, n = paired(study.finals, x, y, batch)
      star = ' **(primary)**' if (x, y) == PRIMARY and batch == largest \
          else ''
      cells.append(_fmt(m, h, n, 4) + star)
    lines.append(f'| {batch} | ' + ' | '.join(cells) + ' |')
  return lines


def _target_section(study: Study, target: float) -> list[str]:
  optimizers = study.plan.optimizers
  lines = ['', f'## Training bytes (millions) to a validation loss of '
           f'{target:.2f} bits/byte', '',
           'The target is the worst tuned cell\'s final sampled validation '
           'loss, so every tuned cell reached it on the tuning seed. Median '
           'over seeds (runs that never reached it: ∞).', '',
           '| batch | ' + ' | '.join(optimizers) + ' |',
           '|---|' + '---|' * len(optimizers)]
  for batch in study.batches:
    cells = []
    for opt in optimizers:
      vals = [bytes_to_target(r, target, study.base.seq_len) / 1e6
              for r in study.finals
              if r['optimizer'] == opt and r['batch'] == batch]
      cells.append(f'{statistics.median(vals):.2f}' if vals else '–')
    lines.append(f'| {batch} | ' + ' | '.join(cells) + ' |')
  return lines


def _binds_section(study: Study) -> tuple[list[str], dict]:
  """Where a bound of 1 binds, and the shares for ``results.json``."""
  clip_opts = [o for o in PRIMARY[::-1] if o in study.plan.optimizers]
  lines = ['', '## Where a bound of 1 binds', '',
           'Share of the logged (step, layer) raw trust ratios above 1, '
           f'seed {study.plan.final_seeds[0]}: for LAMBC the layer-steps the '
           'clip cut, for LAMB those it would have cut. A small share means '
           'the two optimizers take nearly the same steps.', '',
           '| batch | ' + ' | '.join(clip_opts) + ' |',
           '|---|' + '---|' * len(clip_opts)]
  logged = {(r['optimizer'], r['batch']): r for r in study.finals
            if r.get('telemetry')}
  shares = {}
  for batch in study.batches:
    cells = []
    for opt in clip_opts:
      rec = logged.get((opt, batch))
      share = above_one(rec) if rec else math.nan
      shares[f'{opt} @ {batch}'] = share
      cells.append(f'{share:.1%}' if math.isfinite(share) else '–')
    lines.append(f'| {batch} | ' + ' | '.join(cells) + ' |')
  lines += ['', 'By parameter (a stacked leaf\'s layers together; share of '
            'its logged ratios above 1):', '']
  for batch in study.batches:
    for opt in clip_opts:
      rec = logged.get((opt, batch))
      if rec:
        parts = [f'`{p}` {v:.0%}' for p, v in above_one_by_path(rec).items()]
        lines.append(f'- batch {batch}, {opt}: ' +
                     (', '.join(parts) if parts else 'none'))
  return lines, shares


MACHINE_SPREAD = [
    '', '## Machine spread', '',
    'Absolute bits/byte move between machines: rerunning 0.2\'s cells on '
    'another x86-64 machine with the same packages and corpus moved test '
    'bits/byte by up to 0.073. Every record names its CPU model (listed at '
    'the top), not the host, so whether a seed\'s paired runs shared one '
    'machine is not recorded; compare absolute values across machines only '
    'with that spread in mind. Round 2 reran this study\'s noise run and its '
    'batch-128 cells on an Intel Xeon; how far each moved is in '
    '`docs/lm/round2/results.md` (section "Round 1\'s runs, rerun").']


def write(root: str, study: Study) -> list[str]:
  """Writes ``results.md``, ``results.json`` and the figures under
  ``root``; returns the paths written."""
  os.makedirs(root, exist_ok=True)
  target, largest = target_bpb(study), study.batches[-1]
  primary = paired(study.finals, *PRIMARY, largest) if all(
      o in study.plan.optimizers for o in PRIMARY) else (math.nan, math.nan, 0)
  tests, summary = _test_section(study)
  binds, shares = _binds_section(study)
  lines = [*_header(study), *_batches_section(study), *_tuning_section(study),
           *tests, *_pairs_section(study), *_target_section(study, target),
           *binds, *MACHINE_SPREAD,
           '', '## Verdict (generated from the primary interval)', '',
           verdict(primary, largest), '']
  paths = [os.path.join(root, 'results.md'),
           os.path.join(root, 'results.json')]
  with open(paths[0], 'w') as f:
    f.write('\n'.join(lines))
  with open(paths[1], 'w') as f:
    json.dump({'noise_scale': study.noise, 'batches': study.batches,
               'tuned_lr': {f'{o} @ {bb}': lr for (o, bb), lr in
                            study.tuned.items()},
               'test_bpb': summary, 'primary': primary,
               'raw_ratio_above_one': shares,
               'target_bpb': target, 'machine': _machine(study),
               'versions': _versions()}, f, indent=1)
  return paths + _figures(root, study, study.base.seq_len)


def verdict(primary: tuple[float, float, int], batch: int) -> str:
  mean, half, n = primary
  if n < 2 or not math.isfinite(half):
    return 'Too few paired seeds for an interval: no verdict.'
  lo, hi = mean - half, mean + half
  where = (f'LAMBC max 1 − LAMB at batch {batch}: {mean:+.4f} bits/byte, '
           f'95 % interval [{lo:+.4f}, {hi:+.4f}] over {n} paired seeds.')
  if hi < 0:
    return where + ' Clipping the trust ratio at 1 helps LAMB at this batch.'
  if lo > 0:
    return where + ' Clipping the trust ratio at 1 hurts LAMB at this batch.'
  return where + (' The interval contains 0: a tie. These runs do not show '
                  'that clipping changes the loss at this batch.')
