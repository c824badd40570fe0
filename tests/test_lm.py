"""The language-model example: the offline corpus, tfds text, training,
resume, accumulation, per-layer telemetry of the scanned blocks, the study."""

import json
import math

import jax
import numpy as np
import pytest

from examples.configs import lm
from examples.lib import models, text_data
from examples.lib import train as train_lib


def _tiny(**kw):
  base = dict(seq_len=16, global_batch_size=8, num_train_steps=6,
              eval_examples=16, eval_every_steps=6, log_every_steps=2,
              checkpoint_every_steps=2, progress=False)
  base.update(kw)
  return lm().replace(**base)


def _assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                          jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol, err_msg=str(path))


def test_stdlib_corpus_splits_files_stably_and_packs_windows():
  files = text_data.stdlib_files()
  assert len(files) > 100
  assert not any(f.startswith('test/') or '/test/' in f for f in files)
  splits = {s: text_data.StdlibCorpus(s, 32) for s in text_data.SPLITS}
  by_split = {s: set(c.files) for s, c in splits.items()}
  assert set().union(*by_split.values()) == set(files)
  assert sum(map(len, by_split.values())) == len(files)  # disjoint
  for s in ('validation', 'test'):
    assert 0.02 < len(by_split[s]) / len(files) < 0.09, s
  # The split is a pure function of the path (crc32), not of the process.
  assert text_data.split_of('json/decoder.py') == text_data.split_of(
      'json/decoder.py')
  train = splits['train']
  # Consecutive windows overlap by one byte: targets continue the inputs.
  for i in (0, 1, len(train) - 2):
    assert train[i]['tokens'].shape == (33,)
    assert train[i]['tokens'][-1] == train[i + 1]['tokens'][0]
  # The first window is the first file's first bytes.
  with open(f'{train.root}/{train.files[0]}', 'rb') as f:
    assert bytes(train[0]['tokens']) == f.read(33)
  fp = train.fingerprint()
  assert fp['python'] and fp['files'] == len(train.files)
  assert fp['bytes'] == len(train.data) - len(train.files)
  assert len(fp['sha256']) == 16
  with pytest.raises(ValueError, match="got 'dev'"):
    text_data.StdlibCorpus('dev', 32)


def test_text_source_pads_and_masks_one_example_per_row():
  src = text_data.TextSource([{'text': 'ab'}, {'text': b'x' * 40}], seq_len=8)
  short, long = src[0], src[1]
  np.testing.assert_array_equal(short['tokens'],
                                [0, 97, 98, 0, 0, 0, 0, 0, 0])
  # Targets: 'a', 'b', end-of-text; the rest is padding.
  np.testing.assert_array_equal(short['weights'], [1, 1, 1, 0, 0, 0, 0, 0])
  assert long['tokens'].shape == (9,) and long['weights'].sum() == 8


def test_lm_trains_resumes_bit_identical_with_one_ratio_per_layer(tmp_path):
  config = _tiny(bound_policy='running', policy_warmup_steps=1,
                 max_trust_ratio=None)
  full = train_lib.train_and_evaluate(config, str(tmp_path / 'full'))
  killed = train_lib.train_and_evaluate(config.replace(stop_after_steps=3),
                                        str(tmp_path / 'resumed'))
  assert killed['steps'] == 3
  resumed = train_lib.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert int(resumed['state'].step) == 6
  _assert_trees_close(full['state'], resumed['state'])
  assert full['eval'] == resumed['eval']
  ev = full['eval']
  assert ev['count'] == 16 * 16  # target bytes of 16 test sequences
  assert ev['bits_per_byte'] == pytest.approx(ev['loss'] / math.log(2))
  assert ev['bits_per_byte'] < 8.0  # better than uniform over 256 bytes
  assert full['data']['train']['corpus'] == 'python-stdlib'
  records = [json.loads(line) for line in
             (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train] == [2, 4, 6]
  assert train[-1]['loss'] < train[0]['loss']
  assert train[-1]['tokens_per_s'] > 0 and 'bits_per_byte' in train[-1]
  # Telemetry of the scanned blocks: one entry per layer per stacked leaf.
  raw = {k.removeprefix('trust_ratio/raw/') for k in train[0]
         if k.startswith('trust_ratio/raw/')}
  size = models.transformer.SIZES['tiny']
  for leaf in ('qkv/kernel', 'proj/kernel', 'fc1/kernel', 'fc2/kernel'):
    assert {f'blocks/{leaf}[{i}]' for i in range(size.num_layers)} <= raw
    assert f'blocks/{leaf}' not in raw  # never one ratio for the stack
  # Biases and norms are excluded by the preset's mask; embeddings are not.
  assert not any('ln1' in k or 'bias' in k for k in raw)
  assert {'embed/embedding', 'pos'} <= raw
  assert len(raw) == 4 * size.num_layers + 2


def test_accumulated_micro_batches_equal_one_batch():
  config = _tiny(num_train_steps=2, checkpoint_every_steps=0,
                 weight_decay=1e-2)
  one = train_lib.build(config)
  acc = train_lib.build(config.replace(accum_steps=4))
  s1, s4 = one.state, acc.state
  for step in range(2):
    batch = one.train_ds[step]
    s1, m1 = one.train_step(s1, one.parallel.shard_batch(batch))
    s4, m4 = acc.train_step(s4, acc.parallel.shard_batch(batch))
  _assert_trees_close(s1.params, s4.params, rtol=1e-5, atol=1e-6)
  _assert_trees_close(s1.opt_state, s4.opt_state, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1['loss'], m4['loss'], rtol=1e-5)


def test_lm_on_mock_tfds_text(tmp_path):
  config = _tiny(dataset='lm1b', mock_data=True, mock_num_examples=32,
                 eval_split='test', num_train_steps=2, eval_every_steps=2,
                 checkpoint_every_steps=0)
  out = train_lib.train_and_evaluate(config, str(tmp_path))
  assert out['steps'] == 2 and math.isfinite(out['eval']['bits_per_byte'])
  assert out['data']['train'] == {'corpus': 'tfds', 'examples': 32}


@pytest.mark.parametrize('overrides,match', [
    ({'accum_steps': 3}, r"accum_steps=3 must divide each device's 8"),
    ({'accum_steps': 0}, 'accum_steps=0 must divide'),
    ({'seq_len': 512}, 'seq_len 512 exceeds the transformer_tiny max_len'),
    ({'dataset': 'lm1b', 'data_dir': '/nonexistent'}, 'not prepared'),
])
def test_bad_lm_config_fails_before_compute(overrides, match):
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    train_lib.build(_tiny(**overrides))


def test_lm_batch_study_runs_end_to_end_in_tiny_mode(tmp_path):
  from examples import reproduce  # pylint: disable=g-import-not-at-top
  paths = reproduce.main(['--experiment', 'lm_batch', '--tiny', '--seeds',
                          '0', '--workdir', str(tmp_path)])
  text = open(paths[0]).read()
  for col in ('AdamW', 'LAMB', 'LAMBC max 1', 'LAMBC running_stat_bounds'):
    assert f'| {col} |' in text  # the sweep table
  assert '| batch 4 |' in text and '| batch 8 |' in text
  assert 'python-stdlib' in text and 'Wall time' in text
  assert '**(chosen)**' in text
  names = {p.rsplit('/', 1)[-1] for p in paths}
  assert names >= {'bits_per_byte_batch_4.png', 'bits_per_byte_batch_8.png',
                   'trust_ratio_batch_8.png'}
  assert all((tmp_path / n).stat().st_size > 1000 for n in names
             if n.endswith('.png'))
  result = json.loads((tmp_path / 'results.json').read_text())
  # Batch 8 accumulated two micro-batches of 4 at sqrt-scaled rates.
  run = next(r for r in result['results'] if r['row'] == 'batch 8')
  assert run['steps'] == 4


@pytest.mark.parametrize('size,params', [('gpt2_small', 86_039_040),
                                         ('bert_base', 85_645_824)])
def test_large_configs_build_with_per_layer_axes(size, params):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import optax_lambc  # pylint: disable=g-import-not-at-top
  from examples.lib import transformer  # pylint: disable=g-import-not-at-top
  model = nnx.eval_shape(lambda: transformer.TransformerLM(
      transformer.SIZES[size], rngs=nnx.Rngs(0)))  # shapes only, no memory
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert sum(x.size for x in leaves) == params
  axes = optax_lambc.layer_axes_from_flax(model)
  assert axes['blocks']['qkv']['kernel'] == (0,)
  assert axes['embed']['embedding'] is None
  qkv = nnx.state(model, nnx.Param)['blocks']['qkv']['kernel']
  assert qkv.shape == (12, 768, 3 * 768)
