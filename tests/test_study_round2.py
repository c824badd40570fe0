"""The LM study's second round: its schedule of runs and selection rules, the
report's tests, and the config pieces its arms need (no training here: the
round's runs are replaced by a deterministic fake)."""

import json
import math
import re

import numpy as np
import optax
import pytest

import optax_lambc
from examples.configs import lm as lm_preset
from examples.lib import config as config_lib
from examples.lib import jsonl, optim, stats
from study import bit_identity, lm
from study import lm_round2 as r2
from study import lm_round2_report as report


def _score(run: lm.Run) -> float:
  """A validation loss with known minima: best LAMB-family rate 0.0212 at
  batch 128 (0.0424 for AdamW ... by the tuning grid), best setting: beta2
  0.95 with clipping, and the norm-scale variant best of the variants."""
  target = 0.0212 if run.optimizer != 'AdamW' else 0.00849
  s = abs(math.log2(run.lr / target))
  s += 0.0 if dict(run.setting).get('adam_b2') == 0.95 else 0.05
  s += 0.0 if dict(run.setting).get('clip_grad_norm') else 0.02
  s += {'LAMBC max 1, norm scales unbounded': 0.0}.get(run.optimizer, 0.1)
  return 3.0 + s + 0.01 * run.seed / (1 + run.tokens)


def fake_do(calls: list):
  def do(run: lm.Run) -> dict:
    calls.append(run)
    v = _score(run)
    return {'key': run.key, 'stage': run.stage, 'optimizer': run.optimizer,
            'batch': run.batch, 'lr': run.lr, 'seed': run.seed,
            'setting': dict(run.setting), 'tokens': run.tokens, 'steps': 10,
            'validation_bpb': v, 'test_bpb': v + 0.05, 'diverged': False,
            'curve': [[5, v + 1], [10, v]], 'noise': [
                [s, 10.0 + s + run.seed % 7] for s in range(1, 11)],
            'date': '2026-12-06T00:00:00Z', 'commit': 'abc1234',
            'cpu': 'test CPU', 'cores': 2, 'host': 'h',
            'versions': {'jax': 'x'},
            'ratio_summary': {'blocks/ln/scale[0]': [2.0, 10],
                              'blocks/fc/kernel[0]': [0.5, 0]}}
  return do


def test_the_round_runs_every_part_in_order_with_its_selection_rules():
  calls = []
  plan = r2.Plan()
  out = r2.stages(plan, fake_do(calls))
  keys = [c.key for c in calls]
  # Part 1: three noise runs, round 1's seed first.
  assert [c.seed for c in calls[:3]] == [100, 101, 102]
  assert all(c.stage == 'noise' and c.batch == 32 for c in calls[:3])
  # Part 2: every mechanism arm tuned at 128 by the grid rule, then 5 seeds.
  for arm in r2.MECHANISM:
    assert out.tuned[arm] == pytest.approx(0.0212, rel=1e-3)
    assert [r['seed'] for r in out.finals[arm]] == [0, 1, 2, 3, 4]
    assert {r['batch'] for r in out.finals[arm]} == {128}
  # Part 3: 2 arms x 3 rates x 5 seeds at batch 8, no tuning.
  assert len(out.headroom) == 30
  assert sorted({round(r['lr'], 4) for r in out.headroom}) == [
      0.0106, 0.0212, 0.0424]
  # Part 4: the best setting (beta2 0.95 + clipping) at the best rate.
  for arm in r2.FAIR:
    setting, lr = out.fair_choice[arm]
    assert dict(setting) == {'adam_b2': 0.95, 'clip_grad_norm': 1.0}
    assert lr == pytest.approx(out.tuned[arm])
    assert {tuple(sorted(r['setting'].items())) for r in
            out.fair_finals[arm]} == {setting}
  assert out.tuned['AdamW'] == pytest.approx(0.00849, rel=1e-3)
  # Part 5: the variant with the best validation, 3 rates, 4x the bytes.
  assert out.long_arms == ('LAMB', 'LAMBC max 1',
                           'LAMBC max 1, norm scales unbounded')
  for arm in out.long_arms:
    assert len(out.long_tuning[arm]) == 3
    assert {r['tokens'] for r in out.long_finals[arm]} == {4}
  # Parts run in the pre-registered order.
  first_rate = [c.stage for c in calls].index('rate')
  last_rate = max(i for i, c in enumerate(calls) if c.stage == 'rate')
  assert all(c.batch == 128 and c.tokens == 1 and not c.setting
             for c in calls[3:first_rate])
  fair = [i for i, c in enumerate(calls) if c.setting]
  long = [i for i, c in enumerate(calls) if c.tokens == 4]
  assert last_rate < min(fair) and max(fair) < min(long)
  assert long[-1] == len(calls) - 1
  # A key asked for twice (round 1's setting at the tuned rate) is one run.
  assert 130 <= len(set(keys)) <= 160 < len(keys)


def test_run_keys_keep_round_one_and_name_settings_and_tokens():
  base = lm.Run('final', 'LAMB', 128, 0.0212132, 0)
  assert base.key == 'final/LAMB/batch 128/lr 0.0212132/seed 0'
  led = lm.Ledger('docs/lm/runs.jsonl')
  assert base.key in led.records  # round 1's ledger still resolves
  run = lm.Run('tune', 'AdamW', 128, 0.01, 100, r2.FAIR_GRID[-1], 4)
  assert run.key.endswith('/adam_b2 0.95, clip_grad_norm 1, '
                          'warmup_fraction 0.25/tokens x4')
  config = lm.run_config(lm.base_config(r2.Plan(), []), r2.Plan(), run)
  assert (config.adam_b2, config.clip_grad_norm, config.warmup_fraction) == (
      0.95, 1.0, 0.25)
  assert config.num_train_steps == 4 * 192 and config.accum_steps == 2


def test_report_tests_the_five_hypotheses_with_holm(tmp_path):
  out = r2.stages(r2.Plan(), fake_do([]))
  rows = {row['h'].name: row for row in report.tests(out)}
  # Every fake pair differs by a constant: a zero-width interval.
  assert rows['H3']['mean'] == pytest.approx(-0.1)
  assert rows['H1']['mean'] == pytest.approx(0.0)
  assert rows['H1']['outcome'].startswith('not shown')
  assert rows['H3']['outcome'].startswith('not shown')  # -0.1: outside 0.03
  paths = report.write(str(tmp_path), lm.base_config(r2.Plan(), []), out)
  text = open(paths[0]).read()
  for part in ('| H5 |', '## Part 4', 'Original rule', 'test CPU',
               'LAMBC max 1 − LAMB, each at its fair best (descriptive): ',
               '`blocks/ln/scale` max 2', 'identical (n=5)',
               # round 1's LAMB and LAMBC finals have the fake's keys
               "## Round 1's runs, rerun", '| final seeds | 10 |'):
    assert part in text, part
  assert all((tmp_path / p.rsplit('/', 1)[-1]).stat().st_size > 1000
             for p in paths if p.endswith('.png'))
  assert {'validation_fair.png', 'headroom.png', 'noise_scale.png'} <= {
      p.rsplit('/', 1)[-1] for p in paths}
  json.loads((tmp_path / 'results.json').read_text())


def test_a_missing_part_counts_as_p_one_in_holm():
  out = r2.stages(r2.Plan(), fake_do([]))
  out.long_finals = {a: [] for a in out.long_arms}
  rows = {row['h'].name: row for row in report.tests(out)}
  assert math.isnan(rows['H5']['p']) and rows['H5']['holm'] == 1.0
  assert 'outcome' not in rows['H5']


def test_statistics_for_the_tests():
  values = [0.01, 0.02, -0.01, 0.03, 0.0]
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  assert stats.difference_p(values) == pytest.approx(
      scipy_stats.ttest_1samp(values, 0).pvalue)
  # TOST: the larger one-sided p; inside the margin when the 90 % interval
  # is.
  mean, half90, _ = stats.t_interval(values, 0.90)
  p = stats.equivalence_p(values, 0.03)
  assert (p < 0.05) == (mean - half90 > -0.03 and mean + half90 < 0.03)
  assert stats.equivalence_p(values, 0.01) > 0.05
  assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
  assert stats.equivalence_p([0.0, 0.0], 0.03) == 0.0
  assert stats.difference_p([0.0, 0.0]) == 1.0


def test_noise_windows_and_the_batches_each_rule_chooses():
  record = {'steps': 100, 'noise': [[s, float(s)] for s in range(1, 101)]}
  assert lm.noise_scale_summary(record) == pytest.approx(50.0)
  # The original rule: the steps after the first half (51..100).
  assert lm.noise_scale_summary(record, lm.ORIGINAL_NOISE_WINDOW) == \
      pytest.approx(75.5)
  # Round 1's noise run: 19.3 under the amended rule, 50 under the original
  # (as PLAN.md and the audit say), and the batches each rule picks.
  run = next(r for r in lm.Ledger('docs/lm/runs.jsonl').records.values()
             if r['stage'] == 'noise')
  assert lm.noise_scale_summary(run) == pytest.approx(19.34, abs=0.01)
  original = lm.noise_scale_summary(run, lm.ORIGINAL_NOISE_WINDOW)
  assert original == pytest.approx(50.0, abs=0.1)
  assert lm.choose_batches(original) == (16, 64, 256)
  # Round 1: B* = 19.3 (amended) gives 8/16/128; 50 would give 16/64/256.
  assert lm.choose_batches(19.3) == (8, 16, 128)
  assert lm.choose_batches(50.0) == (16, 64, 256)


def test_the_arms_config_pieces():
  config = config_lib.validate(lm_preset().replace(
      optimizer='lambc', unbounded_params='scale', adam_b2=0.95,
      clip_grad_norm=1.0, exclude_bias_and_norm=False))
  f32 = lambda shape, v=1.0: np.full(shape, v, np.float32)
  params = {'ln': {'scale': f32(3), 'bias': f32(3, 0.0)},
            'fc': {'kernel': f32((3, 3))}}
  bound = optim._unbounded(params, 1.0, {'scale'})  # pylint: disable=protected-access
  assert bound == {'ln': {'scale': math.inf, 'bias': 1.0},
                   'fc': {'kernel': 1.0}}
  tx = optim.create_optimizer(config, optax.constant_schedule(0.1),
                              params=params)
  grads = {'ln': {'scale': f32(3, 100.0), 'bias': f32(3)},
           'fc': {'kernel': f32((3, 3))}}
  state = tx.init(params)
  _, state = tx.update(grads, state, params)
  stats_ = optax_lambc.trust_ratio_stats(state).by_path('upper')
  assert stats_['ln/scale'] == math.inf and stats_['fc/kernel'] == 1.0
  # The global gradient norm is clipped before the optimizer: SGD's first
  # step is then the learning rate times a unit-norm direction.
  sgd = optim.create_optimizer(config.replace(optimizer='sgd',
                                              weight_decay=0.0),
                               optax.constant_schedule(0.1), params=params)
  step, _ = sgd.update(grads, sgd.init(params), params)
  norm = np.sqrt(sum(np.sum(np.square(x)) for x in jax_leaves(step)))
  assert norm == pytest.approx(0.1, rel=1e-5)
  for bad in ({'adam_b2': 1.0}, {'clip_grad_norm': -1.0}):
    with pytest.raises(config_lib.ConfigError, match=next(iter(bad))):
      config_lib.validate(lm_preset().replace(**bad))


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(tree)


def test_jsonl_writes_strict_json_and_reads_infinities_back(tmp_path):
  record = {'step': 1, 'upper': math.inf, 'low': -math.inf, 'loss': math.nan,
            'nested': [1.0, {'x': math.inf}], 'text': 'ok'}
  line = jsonl.dumps(record)

  def reject(token):
    raise ValueError(token)
  strict = json.loads(line, parse_constant=reject)
  assert strict['upper'] == 'Infinity' and strict['loss'] == 'NaN'
  back = jsonl.loads(line)
  assert back['upper'] == math.inf and back['low'] == -math.inf
  assert math.isnan(back['loss']) and back['nested'][1]['x'] == math.inf
  assert back['text'] == 'ok'
  # Older files with bare tokens still read.
  assert jsonl.loads('{"u": Infinity}')['u'] == math.inf


def test_bit_identity_compares_bytes_and_builds_the_studys_config():
  a = {'w': np.array([0.0, 1.0], np.float32)}
  assert bit_identity.identical(a, {'w': np.array([0.0, 1.0], np.float32)})
  assert not bit_identity.identical(a, {'w': np.array([-0.0, 1.0],
                                                      np.float32)})
  assert not bit_identity.identical(a, {'w': a['w'].astype(np.float64)})
  over = bit_identity.overrides('LAMBC max 1', 3)
  assert over['global_batch_size'] == 128 and over['num_train_steps'] == 3
  assert over['max_trust_ratio'] == 1.0 and over['accum_steps'] == 2
  lm_preset().replace(**over)  # every key is a config field


def test_an_interim_report_reads_the_ledger_and_trains_nothing(tmp_path):
  calls = []
  full = r2.stages(r2.Plan(), fake_do(calls))
  records = list({c.key: fake_do([])(c) for c in calls}.values())
  ledger = tmp_path / 'runs.jsonl'
  # The noise runs and LAMB's part 2 (tuning grid and final seeds) only.
  done = [r for r in records if r['stage'] == 'noise' or (
      r['optimizer'] == 'LAMB' and r['batch'] == 128 and not r['setting']
      and r['tokens'] == 1)]
  ledger.write_text(''.join(jsonl.dumps(r) + '\n' for r in done))
  part = r2.from_ledger(str(ledger))
  assert part.finals['LAMB'] == full.finals['LAMB']
  assert all(r.get('missing') for r in part.finals['LAMBC max 1'])
  rows = {row['h'].name: row for row in report.tests(part)}
  assert all(math.isnan(rows[h]['p']) for h in rows)  # nothing paired yet
  # A comparison with only some of its seeds has no outcome yet.
  some = r2.from_ledger(str(ledger))
  some.finals['LAMBC max 1'] = [dict(r, missing=False) for r in
                                full.finals['LAMBC max 1'][:3]]
  h1 = next(row for row in report.tests(some) if row['h'].name == 'H1')
  assert h1['n'] == 3 and math.isnan(h1['p']) and 'outcome' not in h1
  assert '| – (n=3) | | | 3 of 5 seeds so far |' in '\n'.join(
      report.tests_section(some))
  paths = report.write(str(tmp_path / 'out'),
                       lm.base_config(r2.Plan(), []), part)
  text = open(paths[0]).read()
  # The planned count follows placeholders where choices are not made yet.
  planned = re.search(rf'\*\*Interim: {len(done)} of about (\d+) planned',
                      text)
  assert planned and 100 < int(planned.group(1)) < 200, text[:600]
  assert '| LAMBC max 1 | not run yet | not run yet | – |' in text
  assert re.search(r'\| LAMB \| 0\.0106: \d\.\d{3}, \*\*0\.0212: .* '
                   r'\| 3\.\d{3} ± 0\.\d{3} \(n=5\) \|', text)
  assert 'diverged' not in text  # a missing run is never a divergence
  assert '| AdamW | not run yet (0 of 10 tuning runs)' in text
  # Every run in the ledger: the report is final.
  ledger.write_text(''.join(jsonl.dumps(r) + '\n' for r in records))
  paths = report.write(str(tmp_path / 'out'), lm.base_config(r2.Plan(), []),
                       r2.from_ledger(str(ledger)))
  assert 'Interim' not in open(paths[0]).read()


@pytest.mark.parametrize('gaps,verdict,held', [
    ((-0.5, -0.45, -0.55, -0.5, -0.52), 'kept as it stands', False),
    ((-0.05, -0.08, -0.06, -0.07, -0.04),
     'changed from "much better" to "better"', True),
    ((0.1, -0.1, 0.05, -0.05, 0.0), 'dropped: LAMB and AdamW tie', False),
    ((0.2, 0.25, 0.22, 0.21, 0.24), 'dropped: AdamW is better', False),
])
def test_the_large_batch_sentence_follows_the_plans_rule(gaps, verdict, held):
  out = r2.stages(r2.Plan(), fake_do([]))
  assert report.fair_sentence(out)[0].startswith('**The sentence')
  adamw = out.fair_finals['AdamW']
  out.fair_finals['LAMB'] = [dict(a, optimizer='LAMB',
                                  test_bpb=a['test_bpb'] + g)
                             for a, g in zip(adamw, gaps, strict=True)]
  text = report.fair_sentence(out)[0]
  assert f'{np.mean(gaps):+.3f} ±' in text
  assert verdict in text, text
  assert text.endswith('held.' if held else 'did not hold.'), text
  # Before every final seed has run, no verdict.
  out.fair_finals['LAMB'] = out.fair_finals['LAMB'][:3] + [
      dict(r, missing=True) for r in out.fair_finals['LAMB'][3:]]
  assert 'waits for' in report.fair_sentence(out)[0]
