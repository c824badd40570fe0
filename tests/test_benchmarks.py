"""The benchmark scripts run and report what they claim (tiny tree only).

Timings are not asserted: machines are shared and noisy. Speed claims live in
the README with the command that measures them.
"""

import json
import math

import jax

from benchmarks import norm_variants, step_time


def test_step_time_benchmark_runs_on_tiny_tree(tmp_path, capsys):
  out = tmp_path / 'bench.json'
  step_time.main(['--tiny', '--json', str(out)])
  data = json.loads(out.read_text())
  result, stacked = data['results']
  assert result['tree'] == 'tiny' and result['leaves'] == 3
  # The stacked tree adds lambc with one trust ratio per stacked layer.
  assert stacked['tree'] == 'tiny_stacked'
  assert 'lambc(per-slice)' in stacked['modes']['donated']
  for mode in ('donated', 'not_donated'):
    rows = result['modes'][mode]
    assert set(rows) == {'adamw', 'optax.lamb', 'lambc(max=None)', 'lambc'}
    assert rows['adamw']['vs_adamw'] == 1.0
    for row in rows.values():
      assert row['median_ms'] > 0 and row['compile_s'] > 0
    # Optimizer state: Adam's two moments plus O(leaves) scalars, no more.
    p = result['param_bytes']
    assert rows['lambc']['state_bytes'] - 2 * p < 64 * result['leaves'] + 64
  assert 'lambc' in capsys.readouterr().out


def test_norm_variants_benchmark_runs(capsys):
  norm_variants.main(['--tree', 'tiny', '--runs', '2'])
  text = capsys.readouterr().out
  for name in ('adamw', 'plain', 'vdot', 'rows', 'variadic'):
    assert name in text


def test_trees_have_the_advertised_sizes():
  def size(name):
    shapes = jax.tree.leaves(step_time.TREES[name](),
                             is_leaf=lambda x: isinstance(x, tuple))
    return sum(math.prod(s) for s in shapes), len(shapes)

  sizes = {name: size(name)[0] for name in ('resnet18', 'resnet50',
                                            'bert_base')}
  assert 11.0e6 < sizes['resnet18'] < 11.4e6
  assert 25.0e6 < sizes['resnet50'] < 26.0e6
  assert 105e6 < sizes['bert_base'] < 112e6
  assert size('deep1000')[1] == 1000


def test_lm_tokens_benchmark_compares_optimizers_in_one_run(tmp_path, capsys):
  from benchmarks import lm_tokens  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'lm.json'
  result = lm_tokens.main(['--tiny', '--json', str(out)])
  assert json.loads(out.read_text())['rows'].keys() == result['rows'].keys()
  rows = result['rows']
  assert set(rows) == {'adamw', 'optax.lamb', 'lamb', 'lambc',
                       'lambc+telemetry'}
  assert rows['adamw']['vs_adamw'] == 1.0
  assert rows['optax.lamb']['vs_optax_lamb'] == 1.0
  for row in rows.values():
    assert row['tokens_per_s'] > 0 and row['compile_s'] > 0
    assert math.isclose(row['tokens_per_s'] * row['median_ms'] / 1e3,
                        result['batch'] * result['seq_len'])
  assert 'lambc+telemetry' in capsys.readouterr().out
