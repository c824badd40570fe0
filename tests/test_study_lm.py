"""The LM large-batch study: the noise-scale tool, the tuning rule, the eval
sample, the report's statistics, and the whole study in tiny mode."""

import json
import math

import numpy as np
import pytest

from study import lm as lm_study
from study import lm_report
from examples.configs import lm
from examples.lib import input_pipeline, noise_scale
from examples.lib import train as train_lib


def test_noise_scale_estimate_matches_a_linear_model_with_known_noise():
  # y = x.w* + e, x ~ N(0, I_d), e ~ N(0, s^2), squared loss at w = w* + d:
  # G = 2 d and tr(Sigma) = 4 (d_dim + 1)|d|^2 + 4 s^2 d_dim, so
  # B_simple = ((dim + 1)|d|^2 + s^2 dim) / |d|^2.
  rng = np.random.default_rng(0)
  dim, s, small, k = 8, 2.0, 4, 16
  delta = rng.normal(size=dim)
  delta *= 0.5 / np.linalg.norm(delta)
  expected = ((dim + 1) * 0.25 + s ** 2 * dim) / 0.25
  traces, grads = [], []
  for _ in range(400):
    x = rng.normal(size=(k, small, dim))
    e = rng.normal(size=(k, small)) * s
    g = 2 * x * (x @ delta - e)[..., None]  # per-example gradients
    micro = g.mean(axis=1)  # k micro-batch means
    out = noise_scale.estimate(np.mean(np.sum(micro ** 2, -1)),
                               np.sum(micro.mean(0) ** 2), small, k * small)
    traces.append(out['trace'])
    grads.append(out['grad_sq'])
  got = noise_scale.noise_scale(float(np.sum(traces)), float(np.sum(grads)))
  assert got == pytest.approx(expected, rel=0.15), (got, expected)
  assert math.isnan(noise_scale.noise_scale(1.0, 0.0))
  with pytest.raises(ValueError, match='big > small'):
    noise_scale.estimate(1.0, 1.0, 4, 4)


def test_train_step_logs_a_finite_positive_noise_scale(tmp_path):
  config = lm().replace(seq_len=16, global_batch_size=8, accum_steps=4,
                        num_train_steps=4, log_every_steps=4,
                        eval_every_steps=4, eval_examples=16,
                        checkpoint_every_steps=0, progress=False,
                        noise_scale=True)
  out = train_lib.train_and_evaluate(config, str(tmp_path))
  b = out['train']['noise_scale']
  # Early in training the gradient dominates: B_simple is of order 1 here,
  # far below the batch.
  assert math.isfinite(b) and 0 < b < 100, b
  with pytest.raises(ValueError, match='noise_scale needs accum_steps > 1'):
    train_lib.build(config.replace(accum_steps=1))


def test_eval_sample_is_fixed_and_spread_over_the_whole_split():
  a = input_pipeline.eval_indices(10_000, 100)
  assert np.array_equal(a, input_pipeline.eval_indices(10_000, 100))
  assert len(set(a.tolist())) == 100 and a.max() > 9_000 and a.min() < 1_000
  assert np.array_equal(input_pipeline.eval_indices(50, 100), np.arange(50))
  assert np.array_equal(input_pipeline.eval_indices(50, 0), np.arange(50))


def _fake(scores):
  """A ``do`` that scores a run by its learning rate."""
  calls = []

  def do(run):
    calls.append(run)
    return {'lr': run.lr, 'validation_bpb': scores(run.lr)}
  return do, calls


def test_tuning_extends_the_grid_while_an_edge_wins():
  guess = lm_study.guess_lr('LAMB', 64)
  assert guess == pytest.approx(3e-2 * 2)
  # The best rate is 8x the guess: the grid grows upwards to reach it.
  do, calls = _fake(lambda lr: abs(math.log2(lr / (8 * guess))))
  best, records = lm_study.tune(do, 'LAMB', 64, radius=1, max_extensions=3)
  assert best == pytest.approx(8 * guess)
  assert [r['lr'] / guess for r in records] == pytest.approx(
      [0.5, 1, 2, 4, 8, 16])
  # Divergence scores +inf; the cap stops the extension.
  do, _ = _fake(lambda lr: -lr if lr < 0.1 else math.inf)
  best, records = lm_study.tune(do, 'AdamW', 16, radius=1, max_extensions=1)
  assert best == pytest.approx(3e-3 * 4) and len(records) == 4
  do, calls = _fake(lambda lr: lr)  # lowest wins: extends downwards
  best, records = lm_study.tune(do, 'AdamW', 16, radius=1, max_extensions=2)
  assert best == pytest.approx(3e-3 / 8) and len(records) == 5
  assert {r.seed for r in calls} == {lm_study.TUNE_SEED}


def test_batches_are_powers_of_two_around_the_noise_scale():
  assert lm_study.choose_batches(25.0) == (8, 32, 128)
  assert lm_study.choose_batches(0.5) == (1, 2, 4)  # distinct, increasing


def test_paired_interval_and_verdict():
  finals = [{'optimizer': o, 'batch': 8, 'seed': s, 'test_bpb': v}
            for o, vals in (('A', [1.0, 2.0, 3.0]), ('B', [1.5, 2.4, 3.6]))
            for s, v in enumerate(vals)]
  mean, half, n = lm_report.paired(finals, 'A', 'B', 8)
  # Differences -0.5, -0.4, -0.6: mean -0.5, sd 0.1, t(0.975, 2) = 4.303.
  assert (mean, n) == (pytest.approx(-0.5), 3)
  assert half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
  assert 'helps' in lm_report.verdict((mean, half, n), 8)
  assert 'a tie' in lm_report.verdict((0.01, 0.05, 5), 8)
  assert 'hurts' in lm_report.verdict((0.1, 0.05, 5), 8)
  assert 'no verdict' in lm_report.verdict((0.1, math.nan, 1), 8)


def test_share_of_raw_ratios_above_one():
  record = {'telemetry': [
      {'step': 1, 'trust_ratio/raw/a': 0.5, 'trust_ratio/raw/b': 3.0,
       'trust_ratio/applied/b': 1.0},
      {'step': 2, 'trust_ratio/raw/a': 1.5, 'trust_ratio/raw/b': math.nan}]}
  # Three finite raw ratios, two above 1; applied values are not counted.
  assert lm_report.above_one(record) == pytest.approx(2 / 3)
  assert math.isnan(lm_report.above_one({}))
  record['telemetry'][0]['trust_ratio/raw/blocks/ln/scale[0]'] = 2.0
  record['telemetry'][1]['trust_ratio/raw/blocks/ln/scale[1]'] = 0.5
  assert lm_report.above_one_by_path(record) == {
      'b': 1.0, 'a': 0.5, 'blocks/ln/scale': 0.5}


def test_lm_batch_study_runs_end_to_end_in_tiny_mode_and_resumes(tmp_path):
  from study import reproduce  # pylint: disable=g-import-not-at-top
  argv = ['--experiment', 'lm_batch', '--tiny', '--workdir', str(tmp_path)]
  paths = reproduce.main(argv)
  text = open(paths[0]).read()
  for part in ('| LAMB | 8 |', '| LAMBC max 1 | 8 |', '**(primary)**',
               'python-stdlib', 'AMD' if 'AMD' in text else 'cores',
               '## Verdict', '## Where a bound of 1 binds', 'validation'):
    assert part in text, part
  names = {p.rsplit('/', 1)[-1] for p in paths}
  assert names >= {'noise_scale.png', 'validation_batch_8.png',
                   'trust_ratio_batch_8.png'}
  assert all((tmp_path / n).stat().st_size > 1000 for n in names
             if n.endswith('.png'))
  ledger = (tmp_path / 'runs.jsonl').read_text().splitlines()
  # noise + one tuning rate per optimizer + 2 seeds x 2 optimizers
  assert len(ledger) == 7
  records = [json.loads(line) for line in ledger]
  assert {r['stage'] for r in records} == {'noise', 'tune', 'final'}
  for r in records:
    assert r['steps'] == 4 and math.isfinite(r['test_bpb']), r['key']
  assert records[0]['noise'] and records[0]['cpu'] and records[0]['commit']
  # Every split a score comes from is fingerprinted, the test split too.
  assert set(records[-1]['data']) == {'train', 'validation', 'test'}
  result = json.loads((tmp_path / 'results.json').read_text())
  assert result['primary'][2] == 2  # two paired seeds
  logged = next(r for r in records if r['stage'] == 'final' and
                r['optimizer'] == 'LAMB' and r.get('telemetry'))
  assert result['raw_ratio_above_one']['LAMB @ 8'] == lm_report.above_one(
      logged)
  # Resuming trains nothing: every run is in the ledger.
  reproduce.main(argv)
  assert (tmp_path / 'runs.jsonl').read_text().splitlines() == ledger
