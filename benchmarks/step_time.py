"""Step-time and compile-time benchmark: lambc vs optax.lamb vs optax.adamw.

Times the jitted ``update + apply_updates`` step on parameter trees shaped like
CIFAR ResNet-18, ResNet-50, BERT-base and a deep 1,000-leaf tree, with params
and optimizer state donated (what a training step does) and not donated. All
optimizers run in the same process, alternated, and medians are reported as
ratios to AdamW and to optax.lamb, with compile times, optimizer-state bytes and
achieved bandwidth as a fraction of a copy bandwidth measured in the same run.

  python -m benchmarks.step_time                 # all trees, prints a table
  python -m benchmarks.step_time --trees resnet18 --runs 30 --json out.json
  python -m benchmarks.step_time --tiny          # seconds; used by the tests
  python -m benchmarks.step_time --trees bert_base --baseline ../v0.2  # A/B
"""

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

import optax_lambc
from examples.lib.stats import machine


# ---------------------------------------------------------------------------
# Parameter trees (shapes only; values are random).


def _bn(c):
  return {'scale': (c,), 'bias': (c,)}


def resnet_shapes(stage_sizes, block, widths=(64, 128, 256, 512),
                  cifar=True, num_classes=10) -> dict:
  """Flax-style ResNet parameter shapes (BasicBlock or Bottleneck)."""
  tree = {'stem': {'kernel': (3, 3, 3, 64) if cifar else (7, 7, 3, 64)},
          'stem_bn': _bn(64)}
  c_in = 64
  for s, (n, w) in enumerate(zip(stage_sizes, widths, strict=True)):
    for b in range(n):
      blk = {}
      if block == 'basic':
        blk['conv1'] = {'kernel': (3, 3, c_in, w)}
        blk['bn1'] = _bn(w)
        blk['conv2'] = {'kernel': (3, 3, w, w)}
        blk['bn2'] = _bn(w)
        c_out = w
      else:
        blk['conv1'] = {'kernel': (1, 1, c_in, w)}
        blk['bn1'] = _bn(w)
        blk['conv2'] = {'kernel': (3, 3, w, w)}
        blk['bn2'] = _bn(w)
        blk['conv3'] = {'kernel': (1, 1, w, 4 * w)}
        blk['bn3'] = _bn(4 * w)
        c_out = 4 * w
      if c_in != c_out:
        blk['proj'] = {'kernel': (1, 1, c_in, c_out)}
        blk['proj_bn'] = _bn(c_out)
      tree[f'stage{s}_block{b}'] = blk
      c_in = c_out
  tree['head'] = {'kernel': (c_in, num_classes), 'bias': (num_classes,)}
  return tree


def bert_base_shapes(layers=12, d=768, ff=3072, vocab=30522) -> dict:
  tree = {'embed': {'word': (vocab, d), 'position': (512, d),
                    'type': (2, d), 'ln': _bn(d)}}
  for i in range(layers):
    tree[f'layer{i}'] = {
        **{k: {'kernel': (d, d), 'bias': (d,)} for k in ('q', 'k', 'v', 'o')},
        'ln1': _bn(d), 'ff1': {'kernel': (d, ff), 'bias': (ff,)},
        'ff2': {'kernel': (ff, d), 'bias': (d,)}, 'ln2': _bn(d)}
  tree['pooler'] = {'kernel': (d, d), 'bias': (d,)}
  return tree


def bert_base_stacked_shapes(layers=12, d=768, ff=3072, vocab=30522) -> dict:
  """BERT-base with its 12 blocks stacked in one leaf per weight (nnx.scan)."""
  tree = bert_base_shapes(0, d, ff, vocab)
  stack = lambda shapes: jax.tree.map(
      lambda s: (layers,) + s, shapes,
      is_leaf=lambda x: isinstance(x, tuple))
  tree['layers'] = stack(bert_base_shapes(1, d, ff, vocab)['layer0'])
  return tree


# Trees whose 'layers' sub-tree stacks layers on axis 0: lambc then also runs
# per slice (one trust ratio per stacked layer).
STACKED = {'bert_base_stacked': {'layers': 0}, 'tiny_stacked': {'layers': 0}}


def deep_shapes(n=1000) -> dict:
  return {f'layer{i:04d}': (32, 32) if i % 2 == 0 else (32,)
          for i in range(n)}


TREES: dict[str, Callable[[], dict]] = {
    'resnet18': lambda: resnet_shapes((2, 2, 2, 2), 'basic'),
    'resnet50': lambda: resnet_shapes((3, 4, 6, 3), 'bottleneck', cifar=False,
                                      num_classes=1000),
    'bert_base': bert_base_shapes,
    'bert_base_stacked': bert_base_stacked_shapes,
    'deep1000': deep_shapes,
    'tiny': lambda: {'a': {'kernel': (8, 8), 'bias': (8,)}, 'b': (3, 3, 2, 4)},
    'tiny_stacked': lambda: {'layers': {'kernel': (3, 8, 8), 'bias': (3, 8)},
                             'head': (8, 2)},
}


def make_params(shapes: dict, seed: int = 0) -> dict:
  leaves, treedef = jax.tree.flatten(
      shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.normal(k, s, jnp.float32) * 0.05
      for k, s in zip(keys, leaves, strict=True)])


# ---------------------------------------------------------------------------
# Optimizers under test.


def load_release(path: str) -> types.ModuleType:
  """Another release's ``optax_lambc`` (a checkout at ``path``), imported
  beside this one: its modules are renamed out of ``sys.modules`` so both
  run in one process (an A/B without machine drift between processes)."""
  mine = lambda: [k for k in sys.modules
                  if k == 'optax_lambc' or k.startswith('optax_lambc.')]
  saved = {k: sys.modules.pop(k) for k in mine()}
  sys.path.insert(0, os.path.abspath(path))
  try:
    release = importlib.import_module('optax_lambc')
  finally:
    sys.path.remove(os.path.abspath(path))
    for k in mine():
      del sys.modules[k]
    sys.modules.update(saved)
  return release


def optimizers(lr=1e-3, wd=1e-2, layer_axes=None, baseline=None) -> dict:
  """name -> (optimizer, the trust_ratio_stats the step reads, or None).

  ``baseline``: another release's ``optax_lambc`` module, whose lambc rows
  are added with ``@version``.
  """
  opts = {
      'adamw': (optax.adamw(lr, weight_decay=wd), None),
      'optax.lamb': (optax.lamb(lr, weight_decay=wd), None),
  }
  for lib, tag in ((optax_lambc, ''), (baseline, '')):
    if lib is None:
      continue
    if lib is baseline:
      tag = f'@{lib.__version__}'
    opts[f'lambc(max=None){tag}'] = (lib.lambc(
        lr, weight_decay=wd, max_trust_ratio=None), None)
    opts[f'lambc{tag}'] = (lib.lambc(lr, weight_decay=wd,
                                     max_trust_ratio=1.0),
                           lib.trust_ratio_stats)
    if layer_axes is not None:
      full = lambda params: {k: layer_axes.get(k) for k in params}
      opts[f'lambc(per-slice){tag}'] = (lib.lambc(
          lr, weight_decay=wd, max_trust_ratio=1.0, layer_axes=full),
                                         lib.trust_ratio_stats)
  return opts


def make_step(opt, telemetry, donate: bool):
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    if telemetry is not None:
      stats = telemetry(state)
      return params, state, (stats.clipped_upper_fraction,
                             stats.clipped_lower_fraction)
    return params, state, ()
  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def copy_bandwidth(tree, runs: int) -> float:
  """Bytes/s of a jitted scaled copy of ``tree`` (one read + one write).

  The same leaves as the step, so the copy gets the same per-leaf parallelism.
  """
  f = jax.jit(lambda t: jax.tree.map(lambda x: x * jnp.float32(1.0001), t),
              donate_argnums=0)  # in place, as a donated step writes
  tree = f(jax.tree.map(jnp.copy, tree))
  jax.block_until_ready(tree)
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    tree = f(tree)
    jax.block_until_ready(tree)
    times.append(time.perf_counter() - t)
  return 2 * tree_bytes(tree) / statistics.median(times)


def bench_tree(name: str, runs: int, warmup: int, baseline=None,
               only: list[str] | None = None) -> dict:
  params0 = make_params(TREES[name]())
  grads = jax.tree.map(lambda p: p * 0.1 + 0.01, params0)
  p_bytes = tree_bytes(params0)
  n_leaves = len(jax.tree.leaves(params0))
  opts = optimizers(layer_axes=STACKED.get(name), baseline=baseline)
  if only:  # the references stay: every ratio needs them
    opts = {k: v for k, v in opts.items()
            if k in only or k in ('adamw', 'optax.lamb')}
  result = {'tree': name, 'params': sum(x.size for x in
                                        jax.tree.leaves(params0)),
            'leaves': n_leaves, 'param_bytes': p_bytes, 'modes': {}}
  bw = copy_bandwidth(params0, max(runs, 10))
  result['copy_bandwidth_GBps'] = bw / 1e9
  for donate in (True, False):
    mode = 'donated' if donate else 'not_donated'
    carry, steps, compile_s, state_bytes = {}, {}, {}, {}
    for key, (opt, telemetry) in opts.items():
      params = jax.tree.map(jnp.copy, params0)
      state = opt.init(params)
      state_bytes[key] = tree_bytes(state)
      step = make_step(opt, telemetry, donate)
      t = time.perf_counter()
      compiled = step.lower(params, state, grads).compile()
      compile_s[key] = time.perf_counter() - t
      for _ in range(warmup):
        params, state, _ = compiled(params, state, grads)
      jax.block_until_ready(params)
      carry[key], steps[key] = (params, state), compiled
    times = {k: [] for k in opts}
    for _ in range(runs):  # alternate optimizers run by run
      for key in opts:
        params, state = carry[key]
        t = time.perf_counter()
        params, state, aux = steps[key](params, state, grads)
        jax.block_until_ready((params, aux))
        times[key].append(time.perf_counter() - t)
        carry[key] = (params, state)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {}
    for key in opts:
      arrays = 7 if key == 'adamw' else 10  # minimum passes (see README)
      rows[key] = {
          'median_ms': med[key] * 1e3,
          'vs_adamw': med[key] / med['adamw'],
          'vs_optax_lamb': med[key] / med['optax.lamb'],
          'compile_s': compile_s[key],
          'compile_vs_optax_lamb': compile_s[key] / compile_s['optax.lamb'],
          'state_bytes': state_bytes[key],
          'state_overhead_bytes': state_bytes[key] - 2 * p_bytes,
          'bandwidth_fraction': arrays * p_bytes / med[key] / bw,
      }
    result['modes'][mode] = rows
  return result


def print_result(r: dict) -> None:
  print(f"\n== {r['tree']}: {r['params'] / 1e6:.1f} M params, {r['leaves']} "
        f"leaves; copy bandwidth {r['copy_bandwidth_GBps']:.1f} GB/s")
  for mode, rows in r['modes'].items():
    print(f'  [{mode}]')
    print(f"  {'optimizer':<24}{'ms':>9}{'/adamw':>8}{'/lamb':>7}"
          f"{'compile s':>10}{'/lamb':>7}{'state MB':>9}{'+bytes':>8}"
          f"{'bw frac':>8}")
    for key, v in rows.items():
      print(f"  {key:<24}{v['median_ms']:>9.2f}{v['vs_adamw']:>8.2f}"
            f"{v['vs_optax_lamb']:>7.2f}{v['compile_s']:>10.2f}"
            f"{v['compile_vs_optax_lamb']:>7.2f}"
            f"{v['state_bytes'] / 1e6:>9.1f}{v['state_overhead_bytes']:>8d}"
            f"{v['bandwidth_fraction']:>8.2f}")


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      '--trees',
      default='resnet18,resnet50,bert_base,bert_base_stacked,deep1000')
  parser.add_argument('--runs', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--json', default=None, help='write results here')
  parser.add_argument('--tiny', action='store_true',
                      help='the tiny tree, 3 runs: a smoke test')
  parser.add_argument('--baseline', default=None, metavar='PATH',
                      help="another release's checkout: its lambc rows run "
                           'in this process too (an A/B)')
  parser.add_argument('--only', default=None,
                      help='comma-separated rows to run (with adamw and '
                           'optax.lamb), e.g. lambc,lambc@0.2.0')
  args = parser.parse_args(argv)
  baseline = load_release(args.baseline) if args.baseline else None
  if args.tiny:
    args.trees, args.runs, args.warmup = 'tiny,tiny_stacked', 3, 1
  print(f'jax {jax.__version__}, optax {optax.__version__}, '
        f'{jax.devices()[0].platform}: {jax.devices()[0].device_kind}, '
        f'{machine()}, {len(jax.devices())} device(s)')
  results = []
  for name in args.trees.split(','):
    r = bench_tree(name, args.runs, args.warmup, baseline,
                   args.only.split(',') if args.only else None)
    print_result(r)
    results.append(r)
  if args.json:
    meta = {'jax': jax.__version__, 'optax': optax.__version__,
            'device': str(jax.devices()[0]), 'runs': args.runs,
            'machine': machine(),
            'date': time.strftime('%Y-%m-%d', time.gmtime())}
    with open(args.json, 'w') as f:
      json.dump({'meta': meta, 'results': results}, f, indent=1)
  return results


if __name__ == '__main__':
  main()
