"""The benchmark scripts run and report what they claim (tiny tree only).

Timings are not asserted: machines are shared and noisy. Speed claims live in
the README with the command that measures them.
"""

import json
import math
import os

import jax
import pytest

from benchmarks import accelerator_step, norm_variants, step_time


def test_step_time_benchmark_runs_on_tiny_tree(tmp_path, capsys):
  out = tmp_path / 'bench.json'
  step_time.main(['--tiny', '--json', str(out)])
  data = json.loads(out.read_text())
  assert ' cores' in data['meta']['machine'] and data['meta']['date']
  result, stacked = data['results']
  assert result['tree'] == 'tiny' and result['leaves'] == 3
  # The stacked tree adds lambc with one trust ratio per stacked layer.
  assert stacked['tree'] == 'tiny_stacked'
  assert 'lambc(per-slice)' in stacked['modes']['donated']
  for mode in ('donated', 'not_donated'):
    rows = result['modes'][mode]
    assert set(rows) == {'adamw', 'optax.lamb', 'lambc(max=None)', 'lambc'}
    for row in rows.values():
      assert row['median_ms'] > 0 and row['compile_s'] > 0
      assert row['vs_adamw'] == pytest.approx(
          row['median_ms'] / rows['adamw']['median_ms'], rel=1e-6)
    # Optimizer state: Adam's two moments plus O(leaves) scalars, no more.
    p = result['param_bytes']
    assert rows['lambc']['state_bytes'] - 2 * p < 64 * result['leaves'] + 64
  printed = capsys.readouterr().out
  assert 'lambc' in printed and ' cores, ' in printed  # the machine named


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
  assert ' cores, ' in result['machine']
  rows = result['rows']
  assert set(rows) == {'adamw', 'optax.lamb', 'lamb', 'lambc',
                       'lambc+telemetry'}
  for row in rows.values():
    for base, key in (('adamw', 'vs_adamw'), ('optax.lamb', 'vs_optax_lamb')):
      assert row[key] == pytest.approx(
          row['median_ms'] / rows[base]['median_ms'], rel=1e-3), (base, row)
    assert row['tokens_per_s'] > 0 and row['compile_s'] > 0
    assert math.isclose(row['tokens_per_s'] * row['median_ms'] / 1e3,
                        result['batch'] * result['seq_len'])
  assert 'lambc+telemetry' in capsys.readouterr().out


HLO = """HloModule jit_aot_0

%fused (a: f32[4], b: f32[4]) -> f32[4] {
  ROOT %add = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %b)
}

ENTRY %main.1 (p0: f32[4], p1: f32[4]) -> (f32[4], f32[]) {
  %p0 = f32[4]{0} parameter(0)
  %p1 = f32[4]{0} parameter(1)
  %fusion = f32[4]{0} fusion(%p0, %p1), kind=kLoop, calls=%fused
  %copy.1 = f32[] copy(%c), metadata={x="y"}
  %c = f32[] constant(1)
  %on_chip = f32[4]{0:S(1)} copy(%fusion)
  %slice-start = ((f32[4]{0}), f32[1]{0:S(1)}, s32[]{:S(2)}) slice-start(%p0), slice={[0:1]}
  %copy-start = (f32[4]{0}, f32[4]{0:S(1)}, u32[]{:S(2)}) copy-start(%on_chip)
  %copy-done = f32[4]{0} copy-done(%copy-start)
  ROOT %tuple = (f32[4]{0}, f32[]) tuple(%fusion, %copy.1)
}
"""  # noqa: E501  (HLO instructions are one line each)


def test_hbm_and_op_counting_on_handwritten_hlo():
  # fusion: reads 2 x 16 bytes, writes 16; copy.1: 4 + 4; the S(1) copy
  # writes on-chip memory (not counted) and reads 16; the async slice reads
  # its 4 bytes (not the whole source); the async copy (an eviction from
  # on-chip memory) writes 16; its -done moves nothing more.
  assert accelerator_step.hbm_bytes(HLO) == 48 + 8 + 16 + 4 + 16
  assert accelerator_step.op_counts(HLO) == {
      'fusions': 1, 'copies': 2, 'scalar_copies': 1, 'async_moves': 2}
  thunks = ('001: kCustomKernel [source] fusion grid\n'
            '002: kCopy [source] copy\n003: kCommandBuffer [x]\n')
  assert accelerator_step.launches(thunks) == {
      'launches': 2, 'kernels': 1, 'copy_thunks': 1}


COLLECTIVE_HLO = """HloModule jit_fsdp

ENTRY %main.2 (p0: f32[8,4], p1: f32[2]) -> f32[64,4] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[2]{0} parameter(1)
  %all-gather = f32[64,4]{1,0} all-gather(%p0), dimensions={0}
  %all-reduce-start = (f32[2]{0}, f32[3]{0}) all-reduce-start(%p1, %p1), to_apply=%add
  %all-reduce-done = (f32[2]{0}, f32[3]{0}) all-reduce-done(%all-reduce-start)
  %all-reduce.1 = f32[] all-reduce(%p1), to_apply=%add
  %all-reduce.2 = (f32[4]{0:T(128)S(1)}, f32[2,8]{1,0:T(8,128)S(1)}) all-reduce(%p1, %p0), to_apply=%add
  ROOT %out = f32[64,4]{1,0} copy(%all-gather)
}
"""  # noqa: E501


def test_collectives_are_counted_by_kind_with_their_bytes():
  got = accelerator_step.collectives(COLLECTIVE_HLO)
  # The gather's result is 64 x 4 floats; the async all-reduce (a tuple of
  # 2 + 3 floats) counts once, at its -start; the scalar one moves 4 bytes;
  # a tuple in on-chip memory (a TPU's combined all-reduce) counts every
  # element: 4 + 16 floats.
  assert got['all-gather'] == [1024]
  assert sorted(got['all-reduce']) == [4, 20, 80]
  assert got['reduce-scatter'] == got['all-to-all'] == []


def test_adamw_moves_whole_passes_on_the_cpu_backend():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  params = {'w': jnp.zeros((256, 256)), 'b': jnp.zeros(256)}
  opt = optax.adamw(1e-3)

  def step(grads, params, state):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  hlo = jax.jit(step, donate_argnums=(1, 2)).lower(
      params, params, opt.init(params)).compile().as_text()
  param_bytes = 4 * (256 * 256 + 256)
  # At least g, m, v, p read and m, v, p written (7 passes, what H100 and TPU
  # reach); XLA:CPU fuses less (10). Either way a whole number of passes.
  passes = accelerator_step.hbm_bytes(hlo) / param_bytes
  assert 7 <= passes <= 12 and abs(passes - round(passes)) < 0.01, passes


def test_release_ab_runs_against_a_checkout(tmp_path):
  from benchmarks import release_ab  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / 'ab.json'
  # This checkout as its own baseline: two copies of the package, one process.
  result = release_ab.main(['--baseline', root, '--trees', 'tiny', '--runs',
                            '3', '--json', str(out)])
  rows = result['trees']['tiny']
  assert json.loads(out.read_text())['trees']['tiny'].keys() == rows.keys()
  base, this = rows.values()  # two copies of one version, both timed
  assert list(rows)[0].endswith('(baseline)') and list(rows)[1].endswith(
      '(this)')
  assert base['median_ms'] > 0 and this['vs_baseline'] == pytest.approx(
      this['median_ms'] / base['median_ms'])


def test_code_lines_counts_statements_not_docstrings_or_comments():
  from benchmarks import code_lines  # pylint: disable=g-import-not-at-top
  source = '''"""Module docstring."""

import os  # a comment


@decorator
def f(a,
      b):
  """Docstring, not code."""
  # a comment line
  if a:
    return (a +
            b)
  else:
    return os
'''
  # Lines: import, decorator + def header (3), if, return (2), else,
  # return; statements: import, def, if and the two returns.
  assert code_lines.count(source) == (9, 5)
