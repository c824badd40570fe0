"""The LM study's second round, reported: ``write(root, base, result)``.

Every table is computed from the ledger's records (``study.lm_round2``);
intervals are Student-t intervals over seeds, differences are paired by
seed, and the five confirmatory comparisons get Holm-adjusted p-values.
Small functions, one per section; ``write`` only joins them.
"""

import json
import math
import os
import statistics

from examples.lib import plots, stats
from examples.lib.config import Config
from study import lm
from study import lm_round2 as r2

NOT_RUN = 'not run yet'


def _done(records: list[dict]) -> list[dict]:
  """The records of runs that exist (not ``lm_round2.placeholder``s)."""
  return [r for r in records if not r.get('missing')]


def _seeds(records: list[dict]) -> dict[int, float]:
  return {r['seed']: r['test_bpb'] for r in _done(records)}


def _test(records: list[dict]) -> list[float]:
  return [r['test_bpb'] for r in _done(records)]


def _cell(values: list[float], digits: int = 3) -> str:
  if not values:
    return NOT_RUN
  mean, half, n = stats.t_interval(values)
  diverged = sum(not math.isfinite(v) for v in values)
  text = ('diverged' if n == 0 else f'{mean:.{digits}f}' if n == 1 else
          f'{mean:.{digits}f} ± {half:.{digits}f}')
  return text + f' (n={n}' + (f', {diverged} diverged)' if diverged else ')')


def _diff(a: list[dict], b: list[dict]) -> str:
  mean, half, n = stats.paired_interval(_seeds(a), _seeds(b))
  if n < 2:
    return f'– (n={n})'
  if mean == 0 and half == 0:
    return f'identical (n={n})'
  return f'{mean:+.4f} ± {half:.4f} (n={n})'


def _value(r: dict) -> str:
  v = r['validation_bpb']
  return (NOT_RUN if r.get('missing') else f'{v:.3f}' if math.isfinite(v)
          else 'diverged')


def _grid_row(records: list[dict], chosen: float | None = None) -> str:
  """``lr: validation`` per rate; the chosen rate in bold once the whole
  grid has run."""
  complete = len(_done(records)) == len(records)
  cells = []
  for r in sorted(records, key=lambda r: r['lr']):
    text = f"{r['lr']:.3g}: {_value(r)}"
    cells.append(f'**{text}**' if complete and r['lr'] == chosen else text)
  return ', '.join(cells)


def _every(result: r2.Round2) -> list[dict]:
  """Every record the round reads, placeholders included (a shared run,
  such as a tuned rate's record in part 4's grid, more than once)."""
  return [*result.noise_runs, *sum(result.tuning.values(), []),
          *sum(result.finals.values(), []), *result.headroom,
          *sum(result.fair_tuning.values(), []),
          *sum(result.fair_finals.values(), []),
          *sum(result.long_tuning.values(), []),
          *sum(result.long_finals.values(), [])]


def _records(result: r2.Round2) -> list[dict]:
  """Every run the round has done, once each (placeholders left out)."""
  return list({r['key']: r for r in _done(_every(result))}.values())


def _planned(result: r2.Round2) -> int:
  """The round's distinct runs, done or not (an unfinished part's count
  follows from placeholders, so it may still change)."""
  return len({r['key'] for r in _every(result)})


def provenance(result: r2.Round2) -> list[str]:
  records = _records(result)
  values = lambda key: sorted({str(r.get(key)) for r in records})
  dates = sorted(r['date'] for r in records if r.get('date'))
  versions = sorted({json.dumps(r['versions'], sort_keys=True)
                     for r in records if r.get('versions')})
  corpus = next((r['data'] for r in records if r.get('data')), None)
  return [
      f"- Runs: {len(records)} in the ledger `{result.ledger}`, from "
      f"{dates[0] if dates else '?'} to {dates[-1] if dates else '?'}.",
      f"- Commit(s): {', '.join(values('commit'))}; machine(s): "
      f"{', '.join(values('cpu'))} ({', '.join(values('cores'))} cores; "
      f"host {', '.join(values('host'))}).",
      f'- Packages: {"; ".join(versions) or "?"}.',
      f'- Corpus (every split scored, the test split too): '
      f'`{json.dumps(corpus, sort_keys=True)}`.']


def noise_section(result: r2.Round2) -> list[str]:
  plan = result.plan
  lines = ['## The gradient noise scale over three seeds', '',
           f'LAMB at batch {plan.noise_batch} (micro-batches of '
           f'{plan.noise_micro_batch}), B_simple in sequences; the median '
           'over each rule\'s window of steps, and the batches that rule '
           'would choose.', '',
           '| seed | middle half (amended rule) | batches | second half '
           '(original rule) | batches |', '|---|---|---|---|---|']
  amended, original = [], []
  for r in _done(result.noise_runs):
    a = lm.noise_scale_summary(r)
    o = lm.noise_scale_summary(r, lm.ORIGINAL_NOISE_WINDOW)
    amended.append(a)
    original.append(o)
    lines.append(f"| {r['seed']} | {a:.1f} | {lm.choose_batches(a)} | "
                 f'{o:.1f} | {lm.choose_batches(o)} |')
  for name, values in (('amended', amended), ('original', original)):
    if not values:
      continue
    mean, half, n = stats.t_interval(values)
    lo = max(mean - half, 1e-9) if math.isfinite(half) else mean
    hi = mean + half if math.isfinite(half) else mean
    lines.append(
        f'\n{name.capitalize()} rule: {_cell(values, 1)} sequences (95 % '
        f'interval); batches from the mean: {lm.choose_batches(mean)}, from '
        f'the interval\'s ends: {lm.choose_batches(lo)} to '
        f'{lm.choose_batches(hi)}.')
  return lines


def rerun_section(result: r2.Round2, round1: str = lm.LEDGER) -> list[str]:
  """How far round 1's runs moved when round 2 reran them (same key)."""
  before = lm.Ledger(round1).records
  groups: dict[str, list[float]] = {}
  for r in _records(result):
    old = before.get(r['key'])
    if old is None:
      continue
    if r['stage'] == 'tune':
      tuned = result.tuned.get(r['optimizer'])
      group = ('tuning at the tuned rate' if r['lr'] == tuned else
               'tuning at other rates')
    else:
      group = {'noise': 'noise-scale runs', 'final': 'final seeds'}.get(
          r['stage'], r['stage'])
    groups.setdefault(group, []).append(abs(r['test_bpb'] - old['test_bpb']))
  machines = sorted({str(r.get('cpu')) for r in before.values()})
  lines = ["## Round 1's runs, rerun", '',
           f'Runs with a key in round 1\'s ledger (`{round1}`, '
           f'{", ".join(machines)}), rerun here: |Δ test bits/byte| against '
           'round 1 (same code path, seed and data; another machine).', '',
           '| runs | n | median | largest |', '|---|---|---|---|']
  for group in ('noise-scale runs', 'tuning at the tuned rate',
                'final seeds', 'tuning at other rates'):
    d = groups.get(group)
    if d:
      lines.append(f'| {group} | {len(d)} | {statistics.median(d):.2g} | '
                   f'{max(d):.2g} |')
  return lines


def mechanism_section(result: r2.Round2) -> list[str]:
  lines = ['## Part 2: the mechanism, at batch '
           f'{result.plan.batch}', '',
           'Learning rate tuned per arm on round 1\'s grid rule (tuning seed '
           f'{lm.TUNE_SEED}, whole validation split, chosen in bold); test '
           'bits/byte over the final seeds (mean ± 95 % interval) and each '
           'arm\'s paired difference from LAMB.', '',
           '| arm | lr: validation bits/byte | test bits/byte | − LAMB |',
           '|---|---|---|---|']
  base = result.finals.get('LAMB', [])
  for arm in result.plan.mechanism:
    if not _done(result.tuning[arm]):
      lines.append(f'| {arm} | {NOT_RUN} | {NOT_RUN} | – |')
      continue
    lines.append(f'| {arm} | {_grid_row(result.tuning[arm], result.tuned[arm])}'
                 f' | {_cell(_test(result.finals[arm]))} | '
                 f'{_diff(result.finals[arm], base) if arm != "LAMB" else "–"}'
                 ' |')
  return lines


def bind_section(result: r2.Round2) -> list[str]:
  """Where a bound of 1 binds: from every step of every final run."""
  lines = ['## Where a bound of 1 binds (every step, every final seed)', '',
           'Per parameter (a stacked leaf\'s layers together): the largest '
           'raw trust ratio of any step and seed, and the share of its '
           '(step, layer) raw ratios above 1. Parameters whose ratio never '
           'exceeded 1 are counted, not listed.', '']
  groups = [(f'batch {result.plan.batch}', arm, result.finals[arm])
            for arm in result.plan.mechanism]
  groups += [(f'batch {result.plan.batch}, ×{result.plan.long_tokens} bytes',
              arm, result.long_finals[arm]) for arm in result.long_arms]
  for where, arm, records in groups:
    if not _done(records):
      continue
    per = above_one(records)
    parts = [f'`{p}` max {h:.3g}, {s:.0%}' for p, (h, s) in per.items()
             if h > 1]
    quiet = sum(h <= 1 for h, _ in per.values())
    lines.append(f'- {where}, {arm}: ' + (', '.join(parts) or 'none') +
                 f'; {quiet} parameter(s) never above 1.')
  return lines


def above_one(records: list[dict]) -> dict[str, tuple[float, float]]:
  """``{parameter: (largest raw ratio, share of step-layers above 1)}`` over
  the runs' ``ratio_summary`` (slices of a stacked leaf together), largest
  share first."""
  high: dict[str, float] = {}
  count: dict[str, list[float]] = {}
  for r in records:
    for layer, (h, above) in r.get('ratio_summary', {}).items():
      path = layer.split('[', 1)[0]
      high[path] = max(high.get(path, -math.inf), h)
      c = count.setdefault(path, [0.0, 0.0])
      c[0] += above
      c[1] += r['steps']
  out = {p: (high[p], count[p][0] / count[p][1]) for p in high}
  return dict(sorted(out.items(), key=lambda kv: (-kv[1][1], -kv[1][0],
                                                  kv[0])))


def headroom_section(result: r2.Round2) -> list[str]:
  plan = result.plan
  rates = sorted({r['lr'] for r in result.headroom})
  lines = [f'## Part 3: learning-rate headroom at batch {plan.small_batch}',
           '', 'Test bits/byte at each rate, every final seed (no tuning).',
           '', '| lr | ' + ' | '.join(plan.headroom) + ' | LAMBC max 1 − '
           'LAMB |', '|---|' + '---|' * (len(plan.headroom) + 1)]
  for lr in rates:
    by = {arm: [r for r in result.headroom if r['optimizer'] == arm and
                r['lr'] == lr] for arm in plan.headroom}
    lines.append(f'| {lr:.3g} | ' + ' | '.join(
        _cell(_test(by[a])) for a in plan.headroom) +
                 f" | {_diff(by.get('LAMBC max 1', []), by.get('LAMB', []))} |")
  return lines


def fair_section(result: r2.Round2) -> list[str]:
  lines = [f'## Part 4: a fair large batch (batch {result.plan.batch})', '',
           'Each optimizer\'s tuned rate with warm-up × Adam β2 × gradient '
           'clipping (tuning seed, validation bits/byte), then the best '
           'setting at half and twice the rate; the final seeds at the best '
           '(setting, rate).', '',
           '| optimizer | setting: validation bits/byte at the tuned rate | '
           'best setting, rates | test bits/byte | − AdamW |',
           '|---|---|---|---|---|']
  for arm in result.plan.fair:
    done = len(_done(result.fair_tuning[arm]))
    if done < len(result.fair_tuning[arm]):  # the choice is not made yet
      lines.append(f'| {arm} | {NOT_RUN} ({done} of '
                   f'{len(result.fair_tuning[arm])} tuning runs) | | | |')
      continue
    setting, lr = result.fair_choice[arm]
    grid = [r for r in result.fair_tuning[arm] if r['lr'] ==
            result.tuned[arm]]
    cells = ', '.join(f"{lm.setting_label(tuple(sorted(r['setting'].items())))}"
                      f': {_value(r)}' for r in grid)
    rates = [r for r in result.fair_tuning[arm]
             if tuple(sorted(r['setting'].items())) == setting]
    lines.append(
        f'| {arm} | {cells} | {lm.setting_label(setting)}; '
        f'{_grid_row(rates, lr)} | '
        f'{_cell(_test(result.fair_finals[arm]))} | '
        + ('–' if arm == 'AdamW' else _diff(
            result.fair_finals[arm], result.fair_finals.get('AdamW', [])))
        + ' |')
  lambc, lamb = (result.fair_finals.get(a, []) for a in ('LAMBC max 1', 'LAMB'))
  if _done(lambc) and _done(lamb):
    lines += ['', 'LAMBC max 1 − LAMB, each at its fair best (descriptive): '
              f'{_diff(lambc, lamb)}.']
  return lines


# PLAN.md's rule for docs/results.md's sentence on large batches: LAMB's fair
# best minus AdamW's, by the upper end of its 95 % interval.
MUCH_BETTER = -0.1
ROUND1_GAP = 0.836  # round 1, batch 128: AdamW 4.054 − LAMB 3.218


def fair_sentence(result: r2.Round2) -> list[str]:
  """What the pre-registered rule makes of the sentence "the layer-wise
  methods hold the large batch much better", and the prediction's outcome."""
  lamb = _seeds(result.fair_finals.get('LAMB', []))
  adamw = _seeds(result.fair_finals.get('AdamW', []))
  mean, half, n = stats.paired_interval(lamb, adamw)
  planned = len(result.fair_finals.get('LAMB', []))
  if n < max(planned, 2):
    return [f'The sentence on large batches (PLAN.md\'s rule) waits for '
            f'LAMB\'s and AdamW\'s final seeds ({n} of {planned} paired).']
  upper = mean + half
  verdict = (
      'kept as it stands: the layer-wise methods hold the large batch much '
      'better' if upper < MUCH_BETTER else
      'changed from "much better" to "better", with the figure' if upper < 0
      else 'dropped: AdamW is better' if mean - half > 0 else
      'dropped: LAMB and AdamW tie')
  held = abs(mean) < 0.3 and upper < 0
  return [
      f'**The sentence on large batches** (PLAN.md\'s rule): LAMB − AdamW at '
      f'their fair best is {mean:+.3f} ± {half:.3f} bits/byte ({n} paired '
      f'seeds; 95 % interval {mean - half:+.3f} to {upper:+.3f}), so the '
      f'sentence is {verdict}. The prediction (the gap shrinks from round '
      f'1\'s {ROUND1_GAP:.2f} to under 0.3, LAMB still better) '
      + ('held.' if held else 'did not hold.')]


def long_section(result: r2.Round2) -> list[str]:
  plan = result.plan
  lines = [f'## Part 5: {plan.long_tokens}× the training bytes (batch '
           f'{plan.batch})', '',
           'Rate retuned on half, once and twice each arm\'s part-2 rate; '
           'test bits/byte over the final seeds and the paired difference '
           'from LAMB.', '',
           '| arm | lr: validation bits/byte | test bits/byte | − LAMB |',
           '|---|---|---|---|']
  if not _done(sum(result.long_tuning.values(), [])):
    return lines[:1] + ['', f'{NOT_RUN.capitalize()}: its arms (the best '
                        'part-2 variant among them) follow from part 2.']
  for arm in result.long_arms:
    chosen = lm.best(result.long_tuning[arm])['lr']
    lines.append(
        f'| {arm} | {_grid_row(result.long_tuning[arm], chosen)} | '
        f'{_cell(_test(result.long_finals[arm]))} | '
        + ('–' if arm == 'LAMB' else _diff(result.long_finals[arm],
                                           result.long_finals['LAMB']))
        + ' |')
  return lines


def hypothesis_records(result: r2.Round2, h: r2.Hypothesis
                       ) -> tuple[list[dict], list[dict]]:
  if h.part == 'mechanism':
    return result.finals.get(h.a, []), result.finals.get(h.b, [])
  if h.part == 'long':
    return result.long_finals.get(h.a, []), result.long_finals.get(h.b, [])
  rate = max(r['lr'] for r in result.headroom)
  pick = lambda arm: [r for r in result.headroom
                      if r['optimizer'] == arm and r['lr'] == rate]
  return pick(h.a), pick(h.b)


def tests(result: r2.Round2) -> list[dict]:
  """The confirmatory comparisons: interval, p-value, Holm, outcome."""
  rows = []
  for h in r2.HYPOTHESES:
    a, b = hypothesis_records(result, h)
    diffs = stats.differences(_seeds(a), _seeds(b))
    planned = len(result.plan.final_seeds)
    if len(diffs) < max(2, planned) or not all(map(math.isfinite, diffs)):
      # Not run, or not all its pre-registered seeds yet: no outcome.
      rows.append({'h': h, 'n': len(diffs), 'p': math.nan})
      continue
    mean, half, n = stats.t_interval(diffs)
    _, half90, _ = stats.t_interval(diffs, 0.90)
    p = (stats.equivalence_p(diffs, r2.MARGIN) if h.prediction == '=' else
         stats.difference_p(diffs))
    rows.append({'h': h, 'n': n, 'mean': mean, 'half': half,
                 'half90': half90, 'p': p})
  # Holm over all five; one not run counts as p = 1 (PLAN.md).
  ps = [r['p'] if math.isfinite(r['p']) else 1.0 for r in rows]
  for r, adj in zip(rows, stats.holm(ps), strict=True):
    r['holm'] = adj
    if math.isfinite(r['p']):
      r['outcome'] = outcome(r)
  return rows


def outcome(row: dict) -> str:
  h, mean, p = row['h'], row['mean'], row['holm']
  if h.prediction == '=':
    return ('holds: equivalent within ±{:g}'.format(r2.MARGIN) if p < 0.05
            else 'not shown: equivalence not significant at 0.05 (Holm)')
  if p >= 0.05:
    return 'not shown: no difference at 0.05 (Holm)'
  sign = '>' if mean > 0 else '<'
  return 'holds' if sign == h.prediction else (
      f'fails: the difference has the other sign ({sign} 0)')


def tests_section(result: r2.Round2) -> list[str]:
  lines = ['## The confirmatory comparisons', '',
           'Test bits/byte, `a − b` paired by seed (negative: a is better). '
           'Differences: two-sided t test; ties: equivalence within ±'
           f'{r2.MARGIN:g} bits/byte by TOST (the 90 % interval inside the '
           'margin). Holm-adjusted over the five.', '',
           '| | a − b | prediction | mean ± 95 % (90 %) | p | Holm p | '
           'outcome |', '|---|---|---|---|---|---|---|']
  for row in tests(result):
    h = row['h']
    if not math.isfinite(row['p']):
      state = (f"{row['n']} of {len(result.plan.final_seeds)} seeds so far"
               if row['n'] else 'not run')
      lines.append(f"| {h.name} | {h.a} − {h.b} ({h.part}) | "
                   f"{h.prediction} | – (n={row['n']}) | | | {state} |")
      continue
    lines.append(
        f"| {h.name} | {h.a} − {h.b} ({h.part}) | {h.prediction} | "
        f"{row['mean']:+.4f} ± {row['half']:.4f} ({row['half90']:.4f}), "
        f"n={row['n']} | {row['p']:.3g} | {row['holm']:.3g} | "
        f"{row['outcome']} |")
  lines += [''] + [f'- {h.name}: {h.claim}.' for h in r2.HYPOTHESES]
  return lines


def _curves(records_by_label: dict[str, list[dict]], batch: int,
            seq_len: int, seeds: int) -> dict[str, list[tuple]]:
  """Mean and min-max per logged step over each label's runs; a label with
  fewer than ``seeds`` runs so far says how many."""
  curves = {}
  for label, runs in records_by_label.items():
    pts: dict[int, list[float]] = {}
    done = [r for r in _done(runs) if not r['diverged']]
    for r in done:
      for step, bpb in r['curve']:
        pts.setdefault(step, []).append(bpb)
    if pts:
      if len(done) < seeds:
        label = f'{label} (n={len(done)})'
      curves[label] = [(s * batch * seq_len / 1e6, statistics.mean(v),
                        min(v), max(v)) for s, v in sorted(pts.items())]
  return curves


def figures(root: str, result: r2.Round2, seq_len: int) -> list[str]:
  plan, paths = result.plan, []
  noise_runs = _done(result.noise_runs)
  noise = {f"seed {r['seed']}": [(s * r['batch'] * seq_len / 1e6, b)
                                 for s, b in r['noise']] for r in noise_runs}
  if noise:
    total = noise_runs[0]['steps'] * noise_runs[0]['batch'] * seq_len / 1e6
    windows = {"the amended rule's window (middle half)": lm.NOISE_WINDOW,
               "the original rule's window (second half)":
                   lm.ORIGINAL_NOISE_WINDOW}
    paths.append(plots.plot_curves(
        noise, os.path.join(root, 'noise_scale.png'),
        title=f'Gradient noise scale along LAMB runs (batch '
              f'{plan.noise_batch}), {len(noise)} seeds',
        xlabel='training bytes (millions)',
        ylabel=f'B_simple (sequences of {seq_len} bytes)', log_y=True,
        spans={k: (w.lo * total, w.hi * total) for k, w in windows.items()}))
  for name, finals, tokens in (
      ('mechanism', result.finals, 1),
      ('long', {a: result.long_finals[a] for a in result.long_arms},
       plan.long_tokens)):
    curves = _curves(finals, plan.batch, seq_len, len(plan.final_seeds))
    if not curves:
      continue
    fewer = ' (n: fewer so far)' if any('(n=' in k for k in curves) else ''
    paths.append(plots.plot_curves(
        curves,
        os.path.join(root, f'validation_{name}.png'),
        title=f'Validation bits/byte (fixed sample), batch {plan.batch}, '
              f'{tokens}× bytes\nmean over {len(plan.final_seeds)} seeds'
              f'{fewer}; band: min-max', xlabel='training bytes (millions)',
        ylabel='validation bits per byte'))
  if all(_done(result.fair_finals[a]) for a in plan.fair):
    fair = {f'{a}, fair best': result.fair_finals[a] for a in plan.fair}
    fair.update({f'{a}, round 1\'s setting': result.finals[a]
                 for a in plan.fair if a in result.finals})
    paths.append(plots.plot_curves(
        _curves(fair, plan.batch, seq_len, len(plan.final_seeds)),
        os.path.join(root, 'validation_fair.png'),
        title=f'Batch {plan.batch}: each optimizer at its fair best (part 4) '
              'and\nat round 1\'s setting; mean over '
              f'{len(plan.final_seeds)} seeds, band: min-max',
        xlabel='training bytes (millions)',
        ylabel='validation bits per byte'))
  rates = {}
  for arm in plan.headroom:
    by: dict[float, list[float]] = {}
    for r in _done(result.headroom):
      if r['optimizer'] == arm:
        by.setdefault(r['lr'], []).append(r['test_bpb'])
    rates[arm] = []
    for lr, v in sorted(by.items()):
      if len(v) < len(plan.final_seeds):
        continue  # the title's mean is over every final seed
      mean, half, _ = stats.t_interval(v)
      half = half if math.isfinite(half) else 0.0
      rates[arm].append((lr, mean, mean - half, mean + half))
  if not any(len(points) >= 2 for points in rates.values()):
    return paths  # a curve needs two rates
  paths.append(plots.plot_curves(
      rates, os.path.join(root, 'headroom.png'),
      title=f'Test bits/byte against the learning rate, batch '
            f'{plan.small_batch}\nmean over {len(plan.final_seeds)} seeds; '
            'band: 95 % interval', xlabel='learning rate',
      ylabel='test bits per byte', log_x=True))
  return paths


def interim(result: r2.Round2) -> list[str]:
  """The status line of a round the ledger does not hold in full."""
  done, planned = len(_records(result)), _planned(result)
  if done >= planned:
    return []
  return [f'**Interim: {done} of about {planned} planned runs are in the '
          f'ledger.** A cell "{NOT_RUN}" has no run behind it, a '
          'confirmatory comparison gets no outcome before all its seeds '
          'have run, and nothing here is the round\'s conclusion. Written '
          'from the ledger, training nothing: '
          '`python -m study.lm_round2_report`.', '']


def write(root: str, base: Config, result: r2.Round2) -> list[str]:
  """Writes ``results.md``, ``results.json`` and the figures under
  ``root``; returns the paths."""
  os.makedirs(root, exist_ok=True)
  command = ('python -m study.reproduce --experiment lm_round2' +
             (' --tiny' if result.tiny else ''))
  lines = [f'# When does the clip help? The LM study, round 2'
           f'{" (tiny mode)" if result.tiny else ""}', '',
           f'Command: `{command}` (resumes from the ledger); the design, '
           'the predictions and the margin were fixed before the runs in '
           '`docs/lm/PLAN.md` (amendment 2).', '',
           *interim(result), *provenance(result), '',
           f'Model `{base.model}`, {base.seq_len}-byte sequences, '
           f'{result.plan.tokens:,} training bytes per run (part 5: '
           f'{result.plan.long_tokens}×); Adam ε {base.adam_eps:g}; weight '
           f'decay {base.weight_decay:g}; warm-up {base.warmup_fraction:.0%}'
           ' then cosine unless a setting says otherwise.', '',
           *tests_section(result), '', *noise_section(result), '',
           *rerun_section(result), '',
           *mechanism_section(result), '', *bind_section(result), '',
           *headroom_section(result), '', *fair_section(result), '',
           *fair_sentence(result), '',
           *long_section(result), '']
  paths = [os.path.join(root, 'results.md'),
           os.path.join(root, 'results.json')]
  with open(paths[0], 'w') as f:
    f.write('\n'.join(lines))
  with open(paths[1], 'w') as f:
    json.dump({'tests': [
        {k: (v.name if k == 'h' else v) for k, v in row.items()}
        for row in tests(result)],
               'tuned_lr': result.tuned,
               'fair_choice': {a: [lm.setting_label(s), lr] for a, (s, lr)
                               in result.fair_choice.items()},
               'long_arms': result.long_arms}, f, indent=1)
  return paths + figures(root, result, base.seq_len)


def main(argv: list[str] | None = None) -> None:
  """Writes the report from the ledger alone (an interim one while runs are
  missing); the study itself writes it too when it finishes."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument('--ledger', default=r2.LEDGER)
  parser.add_argument('--out', default=r2.REPORT_DIR)
  args = parser.parse_args(argv)
  plan = r2.Plan()
  result = r2.from_ledger(args.ledger, plan)
  for path in write(args.out, lm.base_config(plan, []), result):
    print(path)


if __name__ == '__main__':
  main()
