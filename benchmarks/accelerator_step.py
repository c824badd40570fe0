"""The optimizer step on H100 and TPU v5e, compiled ahead of time on this CPU.

No accelerator is needed: libtpu and the jax-cuda12 plugin compile for their
targets on a CPU host (``pip install -e ".[aot]"``), and the compiled program
is deterministic, so its figures are exact where CPU timings are noisy. They
are compiler-measured, not timed. For each target, tree and optimizer it
compiles the donated ``update + apply_updates`` step and reports

* **HBM passes**: bytes the step's top-level ops read and write in device
  memory, divided by the params' bytes (AdamW reads g, m, v, p and writes m, v,
  p: exactly 7.00). Operands and results of every ENTRY op are counted except
  parameter / get-tuple-element / tuple / constant / bitcast / ``*-done``,
  leaving out arrays in an on-chip memory space (layout ``S(n)``); an async
  copy or slice (TPU's prefetches into and evictions from on-chip memory)
  counts its destination's bytes once per end in device memory;
* **fusions**, **copies**, **scalar copies** and **async moves** (TPU's
  prefetches and evictions between device and on-chip memory) in the
  optimised HLO;
* **launches** on H100: the thunks in XLA's thunk sequence (kernels, copies).

Trees: BERT-base shaped, one leaf per tensor (199 leaves), and stacked (the 12
blocks' tensors in 16 leaves with a leading layer axis, one trust ratio per
block). Optimizers: ``optax.adamw``, ``optax.lamb``, ``lambc``, and
``lambc+telemetry`` (the step also returns ``trust_ratio_stats(state)``). The
examples' LM train step (forward, backward, optimizer, metrics) is compiled
for H100 too, AdamW against lambc with telemetry.

With ``--fsdp`` it also compiles the step for an 8-chip TPU v5e slice
(``v5e:2x4``) with the params, gradients and Adam moments (LARC's momentum)
sharded over all 8 chips, each leaf on its largest axis divisible by 8 (the
rule of the examples' ``fsdp`` mode, ``examples.lib.parallel.fsdp_spec``)
and, separately, on its first such axis; the rest of the state replicated.
It counts the collectives per step by kind, with the bytes each moves, for
AdamW, ``optax.lamb``, ``lambc`` and ``larc``, on both trees and on the
examples' LM.

  python -m benchmarks.accelerator_step                   # all, ~10 min
  python -m benchmarks.accelerator_step --targets h100 --trees stacked
  python -m benchmarks.accelerator_step --targets --fsdp  # collectives only
"""

import argparse
import dataclasses
import functools
import glob
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_lambc
from benchmarks.step_time import bert_base_shapes
from examples.lib.stats import machine

HERE = os.path.dirname(os.path.abspath(__file__))
H100_SPEC = os.path.join(HERE, 'aot', 'h100_sxm.txtpb')

_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1,
          'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4, 's32': 4,
          'u32': 4, 'f64': 8, 's64': 8, 'u64': 8, 'c64': 8, 'c128': 16,
          'token': 0}
_ARRAY = re.compile(r'\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?')
_SKIP = ('parameter', 'get-tuple-element', 'tuple', 'constant', 'bitcast')


def _array_bytes(text: str, on_chip: bool = False) -> int:
  """Bytes of every array shape in ``text``; on-chip (``S(n)``) ones only if
  ``on_chip``."""
  total = 0
  for dtype, dims, layout in _ARRAY.findall(text):
    if dtype not in _BYTES or (layout and 'S(' in layout and not on_chip):
      continue
    total += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',')
                                          if d] or [1]))
  return total


def _entry_ops(hlo: str) -> list[tuple[str, str, str, list[str]]]:
  """``(name, result shape, opcode, operand names)`` of each ENTRY op."""
  entry = hlo[hlo.index('\nENTRY'):]
  body = entry[entry.index('{\n') + 2:]
  ops = []
  for line in body.splitlines():
    if line.startswith('}'):
      break
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$',
                 line)
    if m:
      name, result, opcode, rest = m.groups()
      depth, end = 1, len(rest)
      for i, ch in enumerate(rest):
        depth += {'(': 1, ')': -1}.get(ch, 0)
        if depth == 0:
          end = i
          break
      ops.append((name, result, opcode,
                  re.findall(r'%([\w.\-]+)', rest[:end])))
  return ops


def _async_move_bytes(result: str, n_operands: int) -> int:
  """Device-memory bytes of an async copy or slice (TPU memory-space
  prefetches and evictions).

  Its result holds both ends and a context: ``(destination, source,
  context)`` for a copy, ``((source,), slice, context)`` for a slice. The
  moved bytes (the slice's, or the copy's) count once per end that is in
  device memory rather than on chip.
  """
  arrays = _ARRAY.findall(result)
  dtype, dims, layout = arrays[n_operands]
  moved = _BYTES.get(dtype, 0) * int(np.prod(
      [int(d) for d in dims.split(',') if d] or [1]))
  in_hbm = lambda a: not (a[2] and 'S(' in a[2])
  return moved * (in_hbm(arrays[0]) + in_hbm(arrays[n_operands]))


def hbm_bytes(hlo: str) -> int:
  """Device-memory bytes the ENTRY ops of an optimised HLO module move."""
  ops = _entry_ops(hlo)
  shapes = {name: result for name, result, _, _ in ops}
  total = 0
  for _, result, opcode, operands in ops:
    if opcode in _SKIP or opcode.endswith('-done'):
      continue
    read = sum(_array_bytes(shapes.get(o, '')) for o in operands)
    if opcode in ('copy-start', 'slice-start'):
      total += _async_move_bytes(result, len(operands))
      continue
    if opcode.endswith('-start'):
      total += read  # the moved bytes, counted once
      continue
    total += _array_bytes(result) + read
  return total


def op_counts(hlo: str) -> dict[str, int]:
  """Fusions, copies (synchronous), scalar copies (of either kind) and async
  copies or slices (on TPU: prefetches into and evictions from on-chip
  memory, which overlap compute) among the ENTRY ops."""
  ops = _entry_ops(hlo)
  copies = [r for _, r, op, _ in ops if op in ('copy', 'copy-start')]
  scalar = [r for r in copies if re.fullmatch(r'\(?[a-z0-9]+\[\](\{[^}]*\})?'
                                             r'(, [a-z0-9]+\[\][^,]*)*\)?',
                                             r.strip())]
  return {'fusions': sum(op == 'fusion' for _, _, op, _ in ops),
          'copies': sum(op == 'copy' for _, _, op, _ in ops),
          'scalar_copies': len(scalar),
          'async_moves': sum(op in ('copy-start', 'slice-start')
                             for _, _, op, _ in ops)}


def launches(thunk_text: str) -> dict[str, int]:
  """Kernel and copy thunks in an XLA:GPU thunk sequence dump."""
  kinds = re.findall(r'^\d+: (k\w+)', thunk_text, re.M)
  return {'launches': sum(k in ('kCustomKernel', 'kKernel', 'kCopy',
                                'kGemm', 'kCublasLtMatmul', 'kMemset32BitValue',
                                'kMemzero', 'kCuDnn', 'kTriangularSolve')
                          for k in kinds),
          'kernels': sum(k in ('kCustomKernel', 'kKernel') for k in kinds),
          'copy_thunks': kinds.count('kCopy')}


# ---------------------------------------------------------------------------
# Targets and trees.


@dataclasses.dataclass
class Target:
  name: str
  sharding: jax.sharding.Sharding


def get_target(name: str) -> Target:
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if name == 'h100':
    with open(H100_SPEC, encoding='utf-8') as f:
      topo = topologies.get_topology_desc('h100', 'cuda', topology='1x1x1',
                                          target_config=f.read())
  elif name == 'v5e':
    topo = topologies.get_topology_desc(topology_name='v5e:2x2',
                                        platform='tpu',
                                        chip_config_name='default')
  else:
    raise ValueError(f'unknown target {name!r}')
  return Target(name, jax.sharding.SingleDeviceSharding(topo.devices[0]))


def _is_shape(x: Any) -> bool:
  return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def stacked_bert_shapes(layers: int = 12) -> tuple[dict, dict]:
  """BERT-base with the blocks stacked: shapes and ``layer_axes``."""
  flat = bert_base_shapes(layers)
  block = flat.pop('layer0')
  for i in range(1, layers):
    del flat[f'layer{i}']
  blocks = jax.tree.map(lambda s: (layers, *s), block, is_leaf=_is_shape)
  shapes = {**flat, 'blocks': blocks}
  axes = jax.tree.map(lambda s: None, flat, is_leaf=_is_shape)
  axes['blocks'] = 0
  return shapes, axes


def trees(name: str) -> tuple[dict, Any]:
  if name == 'unrolled':
    return bert_base_shapes(), None
  if name == 'stacked':
    return stacked_bert_shapes()
  raise ValueError(f'unknown tree {name!r}')


_COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
                'collective-permute')


def collectives(hlo: str) -> dict[str, list[int]]:
  """Per collective kind, the bytes each op of it moves (its result's, every
  element of a tuple, wherever it lives; an async pair counts once, at its
  ``-start``)."""
  out: dict[str, list[int]] = {k: [] for k in _COLLECTIVES}
  for _, result, opcode, _ in _entry_ops(hlo):
    kind = opcode.removesuffix('-start')
    if kind in out and not opcode.endswith('-done'):
      out[kind].append(_array_bytes(result, on_chip=True))
  return out


def fsdp_spec(shape: tuple[int, ...], rule: str, n: int = 8):
  """``rule='largest'``: the examples' ``fsdp_spec``; ``'first'``: the
  first axis divisible by ``n``. Leaves with no such axis are replicated."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from examples.lib import parallel  # pylint: disable=g-import-not-at-top
  if rule == 'largest':
    return parallel.fsdp_spec(np.zeros(shape, np.int8), n)
  dims = [i for i, d in enumerate(shape) if d % n == 0 and d >= n][:1]
  return P(*[('data' if i in dims else None) for i in range(len(shape))])


def fsdp_rows(shapes: Any, layer_axes: Any, rule: str,
              tree: str) -> dict[str, dict]:
  """Collectives of the donated optimizer step on ``v5e:2x4``, FSDP."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  topo = topologies.get_topology_desc(topology_name='v5e:2x4',
                                      platform='tpu')
  mesh = jax.sharding.Mesh(np.array(topo.devices).reshape(8), ('data',))
  sharding = lambda s: NamedSharding(mesh, fsdp_spec(s, rule))
  params = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding(s)),
      shapes, is_leaf=_is_shape)
  param_sh = jax.tree.map(lambda p: p.sharding, params)
  opts = {name: opt for name, (opt, telemetry) in
          optimizers(layer_axes).items() if not telemetry}
  opts['larc'] = optax_lambc.larc(1e-3, 1e-2, layer_axes=layer_axes)
  rows = {}
  for name, opt in opts.items():
    abstract = jax.eval_shape(opt.init, params)
    state_sh = optax.tree.map_params(
        opt, lambda _, sh: sh, abstract, param_sh,
        transform_non_params=lambda _: NamedSharding(mesh, P()))
    state = jax.tree.map(lambda sh, sub: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), sub),
                         state_sh, abstract)

    def step(grads, params, state, opt=opt):
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    compiled = jax.jit(step, donate_argnums=(1, 2),
                       out_shardings=(param_sh, state_sh)).lower(
                           params, params, state).compile()
    rows[name] = {k: {'ops': len(v), 'bytes': v} for k, v in
                  collectives(compiled.as_text()).items() if v}
    print(f'  v5e:2x4 fsdp({rule}) {tree:9} {name:12} '
          f'{ {k: v["ops"] for k, v in rows[name].items()} }', flush=True)
  return rows


def lm_shapes(model: str) -> tuple[dict, Any]:
  """The examples' LM params (shapes, as a plain tree) and layer axes."""
  from examples.lib import models  # pylint: disable=g-import-not-at-top
  with jax.default_device(jax.devices('cpu')[0]):
    m = models.create_model(model, 256, 0, 0)
    axes = models.layer_axes(m)
    _, params, _ = models.split(m)
  return jax.tree.map(lambda x: tuple(x.shape),
                      params.to_pure_dict()), axes


def optimizers(layer_axes: Any, weight_decay: float = 1e-2
               ) -> dict[str, tuple[Any, bool]]:
  """name -> (optimizer, whether the step returns trust-ratio telemetry)."""
  return {
      'adamw': (optax.adamw(1e-3, weight_decay=weight_decay), False),
      'optax.lamb': (optax.lamb(1e-3, weight_decay=weight_decay), False),
      'lambc': (optax_lambc.lambc(1e-3, weight_decay=weight_decay,
                                  layer_axes=layer_axes), False),
      'lambc+telemetry': (optax_lambc.lambc(1e-3, weight_decay=weight_decay,
                                            layer_axes=layer_axes), True),
  }


DUMP_DIR = os.path.join(tempfile.gettempdir(), f'aot_dump_{os.getpid()}')


def dump_flags() -> None:
  """Sets XLA's dump flags; XLA reads them once, before the first compile."""
  os.environ['XLA_FLAGS'] = (
      f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={DUMP_DIR} "
      '--xla_dump_hlo_module_re=.*aot_.*').strip()


_COUNTER = iter(range(10**6))


def compile_and_count(fn: Callable, args: tuple, donate: tuple[int, ...],
                      target: Target, param_bytes: int) -> dict[str, Any]:
  """Compiles ``fn`` for ``target`` and reads its figures."""
  tag = f'aot_{next(_COUNTER)}'
  fn = functools.wraps(fn)(functools.partial(fn))
  fn.__name__ = tag
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
  out = {'compile_s': round(time.perf_counter() - t0, 1)}
  hlo = compiled.as_text()
  out['hbm_passes'] = round(hbm_bytes(hlo) / param_bytes, 3)
  out.update(op_counts(hlo))
  thunks = glob.glob(os.path.join(DUMP_DIR, f'*jit_{tag}.thunk_sequence.txt'))
  if thunks:
    with open(thunks[0], encoding='utf-8') as f:
      out.update(launches(f.read()))
  return out


def optimizer_rows(target: Target, tree: str, weight_decay: float = 1e-2
                   ) -> dict[str, dict]:
  shapes, layer_axes = trees(tree)
  params = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s, jnp.float32,
                                     sharding=target.sharding),
      shapes, is_leaf=_is_shape)
  param_bytes = sum(4 * int(np.prod(s)) for s in
                    jax.tree.leaves(shapes, is_leaf=_is_shape))
  rows = {}
  for name, (opt, telemetry) in optimizers(layer_axes, weight_decay).items():
    state = jax.eval_shape(opt.init, params)
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=target.sharding), state)

    # Donated inputs in the outputs' order, so that each output reuses its
    # own input's buffer (another order makes XLA copy between them).
    def step(grads, params, state, opt=opt, telemetry=telemetry):
      updates, state = opt.update(grads, state, params)
      out = (optax.apply_updates(params, updates), state)
      return out + (optax_lambc.trust_ratio_stats(state),) if telemetry \
          else out

    rows[name] = compile_and_count(step, (params, params, state), (1, 2),
                                   target, param_bytes)
    print(f'  {target.name:5} {tree:9} {name:16} {rows[name]}', flush=True)
  return rows


def lm_rows(target: Target, model: str) -> dict[str, dict]:
  """The examples' LM train step, AdamW against lambc with telemetry."""
  from examples.configs import lm  # pylint: disable=g-import-not-at-top
  from examples.lib import train as train_lib  # pylint: disable=g-import-not-at-top
  config = lm().replace(model=model, progress=False, checkpoint_every_steps=0,
                        global_batch_size=32, eval_examples=32)
  exp = train_lib.build(config)
  batch = jax.tree.map(np.asarray, exp.train_ds[0])
  put = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                     sharding=target.sharding), tree)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(exp.state.params))
  rows = {}
  for name, tx, telemetry in (
      ('adamw', optax.adamw(1e-3, weight_decay=1e-2), False),
      ('lambc+telemetry', optax_lambc.lambc(
          1e-3, weight_decay=1e-2, layer_axes=exp.layer_axes), True)):
    state = train_lib.TrainState(exp.state.step, exp.state.params,
                                 exp.state.batch_stats,
                                 jax.eval_shape(tx.init, exp.state.params))
    fn = train_lib.make_train_step(exp.task, exp.apply, tx, lambda _: 1e-3,
                                   telemetry=telemetry)
    rows[name] = compile_and_count(fn, (put(state), put(batch)), (0,),
                                   target, param_bytes)
    print(f'  {target.name:5} lm:{model} {name:16} {rows[name]}', flush=True)
  return rows


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--targets', nargs='*', default=['h100', 'v5e'])
  parser.add_argument('--trees', nargs='+', default=['unrolled', 'stacked'])
  parser.add_argument('--lm-model', default='transformer_small',
                      help="the LM step's model ('' to skip)")
  parser.add_argument('--fsdp', action='store_true',
                      help='also the FSDP collectives on a v5e:2x4 slice')
  parser.add_argument('--weight-decay', type=float, default=1e-2,
                      help="the optimizers' weight decay (BERT's LAMB: 1e-2)")
  parser.add_argument('--json', help='write the results here')
  args = parser.parse_args(argv)
  jax.config.update('jax_platforms', 'cpu')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  dump_flags()
  result = {'host': machine(), 'jax': jax.__version__,
            'optax': optax.__version__,
            'optax_lambc': optax_lambc.__version__,
            'date': time.strftime('%Y-%m-%d'),
            'weight_decay': args.weight_decay, 'rows': {}}
  for name in args.targets:
    target = get_target(name)
    for tree in args.trees:
      result['rows'][f'{name}/{tree}'] = optimizer_rows(target, tree,
                                                        args.weight_decay)
    if name == 'h100' and args.lm_model:
      result['rows'][f'{name}/lm:{args.lm_model}'] = lm_rows(
          target, args.lm_model)
  if args.fsdp:
    result['fsdp'] = {}
    trees_ = {t: trees(t) for t in args.trees}
    if args.lm_model:
      trees_[f'lm:{args.lm_model}'] = lm_shapes(args.lm_model)
    for tree, (shapes, axes) in trees_.items():
      for rule in ('largest', 'first'):
        result['fsdp'][f'{tree}/{rule}'] = fsdp_rows(shapes, axes, rule, tree)
  print_table(result)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1)
  return result


def print_table(result: dict) -> None:
  if result.get('fsdp'):
    print('\nFSDP on v5e:2x4 (8 chips), BERT-base float32 donated step: '
          'collectives per step (ops; KiB moved)')
    for key, rows in result['fsdp'].items():
      for name, kinds in rows.items():
        text = ', '.join(f"{k} {v['ops']} ({sum(v['bytes']) / 1024:.1f} "
                         'KiB)' for k, v in kinds.items()) or 'none'
        print(f'  {key:32}{name:12} {text}')
  print(f"\nCompiled ahead of time on {result['host']}, jax {result['jax']}, "
        f"optax {result['optax']}, optax_lambc {result['optax_lambc']}, "
        f"{result['date']}. BERT-base float32, donated update + "
        f"apply_updates, weight decay {result['weight_decay']:g}.")
  print(f"{'target/tree':28}{'optimizer':17}{'HBM passes':>11}"
        f"{'launches':>10}{'fusions':>9}{'copies':>8}{'scalar copies':>15}"
        f"{'async moves':>13}")
  for key, rows in result['rows'].items():
    for name, r in rows.items():
      print(f"{key:28}{name:17}{r['hbm_passes']:>11.2f}"
            f"{r.get('launches', '-'):>10}{r['fusions']:>9}{r['copies']:>8}"
            f"{r['scalar_copies']:>15}{r.get('async_moves', 0):>13}")


if __name__ == '__main__':
  main()
