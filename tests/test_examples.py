"""End-to-end runs of the examples on mock data: train, kill, resume."""

import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from examples.configs import cifar10, digits, imagenet64
from examples.lib import config as config_lib
from examples.lib import train as train_lib
from helpers import checked_compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(preset, **kw):
  base = dict(mock_data=True, mock_num_examples=48, width=4,
              global_batch_size=16, num_train_steps=5,
              checkpoint_every_steps=2, log_every_steps=2, eval_every_steps=5,
              progress=False, weight_decay=1e-4, plots=False)
  base.update(kw)
  return preset().replace(**base)


# One ResNet preset (the cifar10 preset runs end to end in test_readme, the
# LM resumes in test_lm, the CLI survives SIGKILL in test_faults), with one
# basic block per stage: ResNet-18's code path (BatchNorm statistics,
# projections, the 64x64 stem) at half the compile time.
def test_kill_and_resume_ends_where_uninterrupted_run_ends(tmp_path,
                                                           monkeypatch):
  monkeypatch.setitem(config_lib.CLASSIFIERS, 'resnet10_64', ((1, 1, 1, 1), 2))
  config = _tiny(imagenet64, bound_policy='running', policy_warmup_steps=1,
                 model='resnet10_64')
  full = train_lib.train_and_evaluate(config, str(tmp_path / 'full'))
  killed = train_lib.train_and_evaluate(config.replace(stop_after_steps=3),
                                        str(tmp_path / 'resumed'))
  assert killed['steps'] == 3
  # The "kill" left the step-2 checkpoint only: resuming replays step 3 from
  # the restored data position.
  ckpts = sorted(p.name for p in (tmp_path / 'resumed' / 'checkpoints')
                 .iterdir() if p.name.isdigit())
  assert ckpts == ['2']
  resumed = train_lib.train_and_evaluate(config, str(tmp_path / 'resumed'))
  a, b = full['state'], resumed['state']
  assert int(b.step) == 5
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                          jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6,
                               atol=1e-7, err_msg=str(path))
  records = [json.loads(line) for line in
             (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train] == [2, 4, 5]
  assert any(k.startswith('trust_ratio/raw/') for k in train[-1])
  last = train[-1]
  raw = {k.removeprefix('trust_ratio/raw/'): v for k, v in last.items()
         if k.startswith('trust_ratio/raw/')}
  cut = [last[f'trust_ratio/applied/{k}'] < v for k, v in raw.items()]
  assert last['trust_ratio/clipped_upper_fraction'] == sum(cut) / len(cut)
  assert [r['step'] for r in records if r['split'] == 'eval'] == [5]


def test_digits_learns_offline(tmp_path):
  config = digits().replace(num_epochs=4, progress=False)
  result = train_lib.train_and_evaluate(config, str(tmp_path))
  assert result['eval']['count'] == 450
  assert result['eval']['accuracy'] > 0.8


@pytest.mark.parametrize('overrides,error,match', [
    (['optimizer=adagrad'], ValueError, "optimizer='adagrad' is not one of"),
    (['parallel=dp'], ValueError, "parallel='dp' is not one of"),
    (['schedule=linear'], ValueError, "schedule='linear' is not one of"),
    (['model=vgg'], ValueError, "model='vgg' is not one of"),
    (['max_trust_ratio=-1'], ValueError, 'max_trust_ratio=-1.0 must be >= 0'),
    (['policy_decay=1'], ValueError, r'policy_decay=1.0 must be in \[0, 1\)'),
    (['global_batch_size=100000'], ValueError, 'fewer than one global batch'),
    (['mock_data=false', 'data_dir=/nonexistent'], FileNotFoundError,
     'not prepared'),
])
def test_bad_config_fails_before_compute(overrides, error, match):
  config = config_lib.apply_overrides(_tiny(cifar10), overrides)
  with pytest.raises(error, match=match):
    train_lib.build(config)


def test_config_overrides_parse_and_reject_unknown_keys():
  config = config_lib.apply_overrides(
      cifar10(), ['max_trust_ratio=none', 'global_batch_size=2000',
                  'mock_data=true', 'step_decay_at=0.3,0.6'])
  assert config.max_trust_ratio is None and config.global_batch_size == 2000
  assert config.mock_data is True and config.step_decay_at == (0.3, 0.6)
  with pytest.raises(ValueError, match="unknown config key 'lr'"):
    config_lib.apply_overrides(cifar10(), ['lr=1'])


def test_demo_fast_mode_writes_table_and_plots(tmp_path):
  from study import demo  # pylint: disable=g-import-not-at-top
  report = demo.main(['--fast', '--workdir', str(tmp_path)])
  text = open(report).read()
  assert '| batch 512 |' in text and 'LAMBC max 1' in text
  assert 'LAMB (no bound)' in text and 'cores' in text
  # One seed: the paired difference has no interval.
  assert '| LAMBC max 1 − LAMB (no bound) |' in text and '– (n=1)' in text
  for name in ('accuracy_batch_512.png', 'trust_ratios.png'):
    assert (tmp_path / name).stat().st_size > 1000
  # Finished runs are skipped on a second call (resumable grids).
  mtime = (tmp_path / 'batch_512__LAMB__no_bound_' / 'seed_0' /
           'result.json').stat().st_mtime
  demo.main(['--fast', '--workdir', str(tmp_path)])
  assert (tmp_path / 'batch_512__LAMB__no_bound_' / 'seed_0' /
          'result.json').stat().st_mtime == mtime


def test_paired_table_gives_t_intervals_and_names_ties():
  from study import grid as experiments  # pylint: disable=g-import-not-at-top
  grid = [experiments.Setting('batch 8', c, {}) for c in ('A', 'B', 'base')]
  acc = {'A': [0.90, 0.92, 0.94], 'B': [0.80, 0.83, 0.81],
         'base': [0.80, 0.81, 0.82]}
  results = [{'row': 'batch 8', 'col': c, 'seed': s, 'accuracy': v}
             for c, vals in acc.items() for s, v in enumerate(vals)]
  table = experiments.paired_table(results, grid, 'base')
  # A - base: +10, +11, +12 points: sd 1, t(0.975, 2) = 4.303.
  half = 4.302653 / 3 ** 0.5
  assert f'| batch 8 | +11.00 ± {half:.2f} (n=3) |' in table
  assert table.splitlines()[0] == '| | A − base | B − base |'
  # B - base: 0, +2, -1: the interval contains 0.
  assert table.endswith('(n=3) tie |')
  same = [dict(r, col='A', accuracy=r['accuracy']) for r in results
          if r['col'] == 'base']
  assert '| identical (n=3) |' in experiments.paired_table(
      [r for r in results if r['col'] != 'A'] + same, grid, 'base')
  results[0]['accuracy'] = float('nan')  # a diverged seed is left out
  assert '(n=2)' in experiments.paired_table(results, grid, 'base')


def test_reproduce_harness_on_mock_data(tmp_path):
  from study import reproduce  # pylint: disable=g-import-not-at-top
  _, grid = reproduce.experiment('table1')
  assert {(s.row, s.col) for s in grid} == {
      (f'batch {b}', c) for b in (1000, 2000, 3000)
      for c in ('LAMBC max 1', 'LAMB (no bound)')}
  _, grid = reproduce.experiment('figure2')
  assert [s.col for s in grid] == ['LAMBC max 1', 'LAMBC max 3',
                                   'LAMBC max 5', 'LAMBC max 10',
                                   'LAMB (no bound)']
  paths = reproduce.main(['--experiment', 'figure3', '--mock', '--workdir',
                          str(tmp_path)])
  text = open(paths[0]).read()
  assert 'figure3 (mock data)' in text and '| batch 400 |' in text
  assert all((tmp_path / p).exists() for p in paths)


def test_plot_command_writes_curves_and_heatmaps(tmp_path):
  from examples import plot  # pylint: disable=g-import-not-at-top
  config = digits().replace(num_train_steps=4, log_every_steps=1,
                            progress=False)
  train_lib.train_and_evaluate(config, str(tmp_path))
  # Training wrote its plots; the command writes them again.
  names = ('loss.png', 'accuracy.png', 'trust_ratio_raw.png',
           'trust_ratio_applied.png')
  written = {n: (tmp_path / n).stat().st_mtime_ns for n in names}
  plot.main(['--workdir', str(tmp_path)])
  for name in names:
    assert (tmp_path / name).stat().st_size > 1000
    assert (tmp_path / name).stat().st_mtime_ns >= written[name]


def test_stacked_layers_demo_shows_the_problem_and_the_fix():
  from examples import stacked_layers  # pylint: disable=g-import-not-at-top
  out = stacked_layers.main()
  assert out['per leaf']['ratios'] < out['layer_axes']['ratios'] == out[
      'unrolled']['ratios']
  assert max(out['per leaf']['drift']) > 1.0  # a block ends far off
  assert max(out['layer_axes']['drift']) < 1e-5
  np.testing.assert_allclose(out['layer_axes']['fc1_raw'],
                             out['unrolled']['fc1_raw'], rtol=1e-4)


def test_heatmap_rows_are_stacked_layers_in_order():
  from examples.lib import plots  # pylint: disable=g-import-not-at-top
  records = [{'split': 'train', 'step': s,
              **{f'trust_ratio/raw/blocks/k[{i}]': 0.1 * i for i in range(12)},
              'trust_ratio/raw/head': 1.0} for s in (1, 2)]
  layers, steps, m = plots.trust_ratio_matrix(records)
  assert layers == [f'blocks/k[{i}]' for i in range(12)] + ['head']
  assert m.shape == (13, 2) and steps == [1, 2]


def test_heatmap_panel_says_whether_and_how_often_the_clip_bound():
  from examples.lib import plots  # pylint: disable=g-import-not-at-top

  def run(raw, applied, upper):
    return [{'split': 'train', 'step': 1, 'trust_ratio/raw/a': raw[0],
             'trust_ratio/raw/b': raw[1], 'trust_ratio/applied/a': applied[0],
             'trust_ratio/applied/b': applied[1], 'trust_ratio/upper/a': upper,
             'trust_ratio/upper/b': upper}]
  inf = float('inf')
  assert plots.clip_summary(run((3.0, 0.5), (1.0, 0.5), 1.0)) == \
      'clip bound: 50% of cells'
  assert plots.clip_summary(run((3.0, 0.5), (3.0, 0.5), inf)) == \
      'no upper bound'
  assert plots.clip_summary(run((0.9, 0.5), (0.9, 0.5), 1.0)) == \
      'the clip never bound'


def test_heatmap_columns_centre_on_their_steps_one_step_included(
    tmp_path, monkeypatch):
  import warnings  # pylint: disable=g-import-not-at-top
  import matplotlib.axes  # pylint: disable=g-import-not-at-top
  from examples.lib import plots  # pylint: disable=g-import-not-at-top
  plots._plt()  # pylint: disable=protected-access  # the Agg backend first
  extents = []
  imshow = matplotlib.axes.Axes.imshow

  def recorded(self, *args, **kwargs):
    extents.append(kwargs['extent'])
    return imshow(self, *args, **kwargs)
  monkeypatch.setattr(matplotlib.axes.Axes, 'imshow', recorded)

  def record(step):
    return {'split': 'train', 'step': step, 'trust_ratio/raw/a': 2.0,
            'trust_ratio/applied/a': 1.0, 'trust_ratio/upper/a': 1.0}
  for steps in ((4,), (2, 4, 6)):
    with warnings.catch_warnings():
      warnings.simplefilter('error')  # a one-step run warns about nothing
      plots.plot_trust_ratio_heatmaps({'': [record(s) for s in steps]},
                                      str(tmp_path / 'h.png'),
                                      mark_clipped=True)
    assert (tmp_path / 'h.png').stat().st_size > 1000
  # Each column's centre is its step.
  assert [e[:2] for e in extents] == [(3.5, 4.5), (1.0, 7.0)]


@pytest.mark.parametrize('setting,match', [
    ('optimizer=lambcc', "optimizer='lambcc' is not one of"),
    ('max_trust_ratio=-1', 'max_trust_ratio=-1.0 must be >= 0'),
    ('accum_steps=3', 'accum_steps=3 must divide global_batch_size 64'),
    ('seq_len=100000', 'seq_len 100000 exceeds the transformer_tiny'),
])
def test_cli_rejects_a_bad_value_before_jax_starts(setting, match):
  # The check runs on the parsed config alone: JAX is never imported (the
  # timeout only catches a hang).
  code = ('import runpy, sys\n'
          "sys.argv = ['train', 'lm', '--workdir', '/nonexistent', '--set', "
          f"{setting!r}]\n"
          'try:\n'
          "  runpy.run_module('examples.main', run_name='__main__')\n"
          'except SystemExit as e:\n'
          "  print('exit', e.code, 'jax' in sys.modules)\n")
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
  assert out.stdout.strip() == 'exit 2 False', out.stdout + out.stderr
  assert re.search(match, out.stderr), out.stderr


def test_every_model_the_config_accepts_is_built():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from examples.lib import models  # pylint: disable=g-import-not-at-top
  for name in (*config_lib.CLASSIFIERS, *config_lib.TRANSFORMERS):
    # Shapes only: the module is built, no parameter is initialised.
    model = nnx.eval_shape(lambda n=name: models.create_model(n, 10, 4, 0))
    kind = ('TransformerLM' if name in config_lib.TRANSFORMERS else
            'SmallCNN' if config_lib.CLASSIFIERS[name] is None else 'ResNet')
    assert type(model).__name__ == kind, name
  with pytest.raises(ValueError, match="unknown model 'vit'"):
    models.create_model('vit', 10, 4, 0)


def _read_events(logdir) -> list:
  """Every event in a directory's TensorBoard files (TFRecord framing:
  length, its CRC, the serialised ``Event``, its CRC)."""
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + length])
      events.append(event)
      pos += 12 + length + 4
  return events


def test_tensorboard_summaries_beside_the_jsonl(tmp_path):
  config = digits().replace(num_train_steps=4, log_every_steps=2,
                            eval_every_steps=4, progress=False,
                            global_batch_size=64)
  train_lib.train_and_evaluate(config, str(tmp_path))
  scalars = {}
  for e in _read_events(tmp_path / 'tensorboard'):
    for v in e.summary.value:
      scalars.setdefault(v.tag, {})[e.step] = v.simple_value
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  train = [r for r in rows if r['split'] == 'train']
  # The same numbers as metrics.jsonl, per split, telemetry included.
  assert scalars['train/loss'] == pytest.approx(
      {r['step']: r['loss'] for r in train})
  assert set(scalars['eval/accuracy']) == {4}
  key = 'trust_ratio/applied/conv1/kernel'
  assert scalars[f'train/{key}'][4] == pytest.approx(train[-1][key])


@pytest.mark.parametrize('preset,settings', [
    ('digits', ['optimizer=lamb']),
    ('digits', ['max_trust_ratio=none']),
], ids=['lamb', 'unbounded_lambc'])  # mock cifar10: tests/test_readme.py
def test_runs_print_no_warnings_and_log_strict_json_and_tensorboard(
    preset, settings, tmp_path):
  args = [sys.executable, '-m', 'examples.main', preset, '--workdir',
          str(tmp_path), '--set', 'num_train_steps=4', '--set',
          'log_every_steps=2', '--set', 'eval_every_steps=4']
  for item in settings:
    args += ['--set', item]
  out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=checked_compilation_cache(
                           dict(os.environ, JAX_PLATFORMS='cpu')))
  assert out.returncode == 0, out.stderr[-3000:]
  noisy = [line for line in (out.stdout + out.stderr).splitlines()
           if re.search(r'warn', line, re.I)]
  assert not noisy, noisy[:5]

  def reject(token):
    raise ValueError(token)
  rows = [json.loads(line, parse_constant=reject) for line in
          (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in rows if r['split'] == 'train']
  # No upper bound: logged as "Infinity" (strict JSON), read back as inf.
  uppers = [v for k, v in train[-1].items()
            if k.startswith('trust_ratio/upper/')]
  assert uppers and set(uppers) == {'Infinity'}, uppers
  from examples.lib import plots  # pylint: disable=g-import-not-at-top
  decoded = [r for r in plots.read_metrics(str(tmp_path))
             if r['split'] == 'train']
  assert all(math.isinf(v) for k, v in decoded[-1].items()
             if k.startswith('trust_ratio/upper/'))
  # TensorBoard's own reader: the finite scalars, and no infinite bounds.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
  events.Reload()
  tags = events.Tags()['scalars']
  assert 'train/loss' in tags and 'eval/accuracy' in tags
  assert any(t.startswith('train/trust_ratio/raw/') for t in tags)
  assert not any(t.startswith('train/trust_ratio/upper/') for t in tags)
  assert [e.step for e in events.Scalars('train/loss')] == [2, 4]
