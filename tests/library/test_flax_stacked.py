"""Real Flax models with scanned blocks: the metadata helper and one step.

An NNX model whose blocks are built with ``nnx.vmap`` and run with ``nnx.scan``
(and a linen ``nn.scan`` model) carry the 'layers' partition name; the helper
must find the right axes, and one LAMBC step on the stacked model must equal
the step on the same model unrolled (one leaf per block).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import optax_lambc
from examples.lib.models import StackedResidualMLP

D, L = 8, 4
SCALES = [20.0, 1.0, 0.05, 1.0]  # per-block fc1 scales: ratios differ a lot


def _model(**kw) -> StackedResidualMLP:
  with nnx.use_eager_sharding(False):
    model = StackedResidualMLP(D, L, 3, nnx.Rngs(0), **kw)
  kernel = model.blocks.fc1.kernel
  kernel[...] = kernel[...] * jnp.asarray(SCALES)[:, None, None]
  return model


def _loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _data():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(16, D)), jnp.float32),
          jnp.asarray(rng.integers(0, 3, size=16)))


def test_helper_reads_nnx_scan_metadata():
  axes = optax_lambc.layer_axes_from_flax(_model())
  assert axes['blocks']['fc1'] == {'kernel': (0,), 'bias': (0,)}
  assert axes['blocks']['norm'] == {'scale': (0,), 'bias': (0,)}
  assert axes['head'] == {'kernel': None, 'bias': None}
  # The same from the Param state.
  state_axes = optax_lambc.layer_axes_from_flax(nnx.state(_model(), nnx.Param))
  assert state_axes == axes


def test_nnx_step_equals_unrolled_step():
  model = _model()
  axes = optax_lambc.layer_axes_from_flax(model)
  x, y = _data()
  grads = nnx.jit(nnx.grad(_loss))(model, x, y)  # eagerly: a compile per op
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  g_pure = nnx.to_pure_dict(grads)

  # Stacked: through nnx.Optimizer, which hands optax an nnx.State of
  # Variables; the pure-dict layer_axes tree matches it by key path.
  mask = lambda p: optax_lambc.exclude_bias_and_norm(p, layer_axes=axes)
  tx = optax_lambc.lambc(0.1, weight_decay=1e-2, mask=mask,
                         trust_ratio_mask=mask, layer_axes=axes)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  optimizer.update(model, grads)
  stacked_after = nnx.to_pure_dict(nnx.state(model, nnx.Param))

  # Unrolled: one leaf per block, plain per-leaf ratios.
  def unroll(tree):
    out = {f'block{i}': jax.tree.map(lambda a, i=i: a[i], tree['blocks'])
           for i in range(L)}
    out['head'] = tree['head']
    return out

  tx_u = optax_lambc.lambc(0.1, weight_decay=1e-2,
                           mask=optax_lambc.exclude_bias_and_norm,
                           trust_ratio_mask=optax_lambc.exclude_bias_and_norm)
  p_u = unroll(params)
  updates, state_u = jax.jit(tx_u.update)(unroll(g_pure), tx_u.init(p_u),
                                          p_u)
  unrolled_after = optax.apply_updates(p_u, updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               unroll(stacked_after), unrolled_after)

  # Telemetry: one entry per block for each stacked kernel; the clip binds on
  # the x20 block only, which a per-leaf ratio over the stack would miss.
  stats = optax_lambc.trust_ratio_stats(optimizer.opt_state)
  raw = np.asarray(stats.by_path('raw')['blocks/fc1/kernel'])
  assert raw.shape == (L,)
  stats_u = optax_lambc.trust_ratio_stats(state_u)
  np.testing.assert_allclose(
      raw, [float(stats_u.by_path('raw')[f'block{i}/fc1/kernel'])
            for i in range(L)],
      rtol=1e-5)
  assert raw[0] > 1.0 > raw[2]


def test_helper_rejects_unannotated_params_in_a_stack():
  with pytest.raises(ValueError, match="'blocks/norm/(bias|scale)' has no "
                     'partition names'):
    optax_lambc.layer_axes_from_flax(_model(annotate_norm=False))


def test_helper_says_when_there_is_no_layer_annotation():
  plain = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="No parameter carries the partition "
                     "name 'layers'"):
    optax_lambc.layer_axes_from_flax(plain)


class LinenBlock(nn.Module):

  @nn.compact
  def __call__(self, x, _):
    dense = nn.Dense(D, kernel_init=nn.with_partitioning(
        nn.initializers.lecun_normal(), (None, None)),
                     bias_init=nn.with_partitioning(nn.initializers.zeros,
                                                    (None,)))
    return x + jnp.tanh(dense(x)), None


class LinenModel(nn.Module):

  @nn.compact
  def __call__(self, x):
    stack = nn.scan(LinenBlock, variable_axes={'params': 0},
                    split_rngs={'params': True}, length=L,
                    metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = stack(name='blocks')(x, None)
    return nn.Dense(3, name='head')(x)


def test_linen_scan_step_equals_unrolled_step():
  x, y = _data()
  boxed = LinenModel().init(jax.random.key(0), x)
  axes = optax_lambc.layer_axes_from_flax(boxed)
  # Linen variables give the tree inside variables['params'].
  assert axes['blocks']['Dense_0'] == {'kernel': (0,), 'bias': (0,)}
  assert axes['head']['kernel'] is None
  params = nn.unbox(boxed)['params']

  def loss(p):
    logits = LinenModel().apply({'params': p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  grads = jax.jit(jax.grad(loss))(params)  # eagerly: a compile per op
  tx = optax_lambc.lambc(0.1, layer_axes=axes)
  up_s, _ = tx.update(grads, tx.init(params), params)

  unroll = lambda t: {**{f'b{i}': jax.tree.map(lambda a, i=i: a[i],
                                                t['blocks'])
                         for i in range(L)}, 'head': t['head']}
  tx_u = optax_lambc.lambc(0.1)
  up_u, _ = jax.jit(tx_u.update)(unroll(grads), tx_u.init(unroll(params)),
                                 unroll(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-8),
               unroll(up_s), up_u)


def _stack(depth: int, rngs: nnx.Rngs, annotate: bool = True):
  """``depth`` vmapped blocks (a Linear and a LayerNorm), 'layers'-named."""
  names = {'out_sharding': (None,)} if annotate else {}

  @nnx.split_rngs(splits=depth)
  @nnx.vmap(in_axes=(0,), out_axes=0,
            transform_metadata={nnx.PARTITION_NAME: 'layers'})
  def make(rngs):
    block = nnx.Module()
    block.fc = nnx.Linear(4, 4, rngs=rngs,
                          kernel_metadata={'out_sharding': (None, None)},
                          bias_metadata={'out_sharding': (None,)})
    block.ln = nnx.LayerNorm(4, rngs=rngs, scale_metadata=names,
                             bias_metadata=names)
    return block

  return make(rngs)


def _tree(**modules) -> nnx.Module:
  root = nnx.Module()
  for name, module in modules.items():
    setattr(root, name, module)
  return root


@pytest.mark.parametrize('case', ['encoder_decoder', 'two_towers',
                                  'beside_in_a_backbone'])
def test_helper_finds_each_stacks_own_root(case):
  rngs = nnx.Rngs(0)
  with nnx.use_eager_sharding(False):
    if case == 'encoder_decoder':  # the model: head/bias is (2,)
      model = _tree(enc=_stack(3, rngs), dec=_stack(2, rngs),
                    head=nnx.Linear(4, 2, rngs=rngs))
      want = {'enc': (0,), 'dec': (0,)}
    elif case == 'two_towers':  # equal depths; a head of that width too
      model = _tree(left=_stack(4, rngs), right=_stack(4, rngs),
                    head=nnx.Linear(4, 4, rngs=rngs))
      want = {'left': (0,), 'right': (0,)}
    else:  # a backbone holding an embedding-like layer beside its stack
      model = _tree(backbone=_tree(blocks=_stack(3, rngs),
                                   proj=nnx.Linear(3, 4, rngs=rngs)),
                    other=_stack(2, rngs))
      want = {'backbone': {'blocks': (0,)}, 'other': (0,)}
  axes = optax_lambc.layer_axes_from_flax(model)

  def check(node, expect):
    if isinstance(expect, dict):
      for k, v in expect.items():
        check(node[k], v)
    else:
      assert jax.tree.leaves(node, is_leaf=lambda x: x is None or
                             isinstance(x, tuple)) == [expect] * 4, node
  check(axes, want)
  for name in ('head', 'proj'):
    if name in axes or name in axes.get('backbone', {}):
      node = axes.get(name) or axes['backbone'][name]
      assert node == {'kernel': None, 'bias': None}
  # The axes drive a real step: one ratio per block of every stack.
  params = nnx.state(model, nnx.Param)
  stats = optax_lambc.trust_ratio_stats(
      optax_lambc.lambc(1e-2, layer_axes=axes).init(params))
  assert stats.values.shape[1] == sum(
      int(np.prod(s)) or 1 for s in stats.names.shapes)


@pytest.mark.parametrize('where', ['encoder', 'backbone'])
def test_helper_still_rejects_an_unannotated_norm_inside_a_stack(where):
  rngs = nnx.Rngs(0)
  with nnx.use_eager_sharding(False):
    if where == 'encoder':
      model = _tree(enc=_stack(3, rngs, annotate=False), dec=_stack(2, rngs),
                    head=nnx.Linear(4, 2, rngs=rngs))
      path = 'enc/ln'
    else:
      model = _tree(backbone=_tree(blocks=_stack(3, rngs, annotate=False),
                                   proj=nnx.Linear(3, 4, rngs=rngs)))
      path = 'backbone/blocks/ln'
  with pytest.raises(ValueError, match=f"'{path}/(bias|scale)' has no "
                     'partition names'):
    optax_lambc.layer_axes_from_flax(model)
