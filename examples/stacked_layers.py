"""Why stacked layers need ``layer_axes``: one model, stacked and unrolled.

``python -m examples.stacked_layers`` builds a 4-block residual MLP whose
blocks are stacked with ``nnx.vmap``/``nnx.scan`` (the layout of scanned
transformers), scales one block's ``fc1`` kernel by 20 and another's by 0.05,
and trains it for 20 LAMBC steps three ways: stacked without ``layer_axes``
(one trust ratio per stacked leaf), stacked with ``layer_axes`` read from the
Flax metadata, and unrolled (one leaf per block, the reference). It prints the
number of trust ratios, the ratios of ``fc1/kernel``, and how far each block
ends from where the unrolled model puts it. Real data: scikit-learn digits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_lambc
from examples.lib.models import StackedResidualMLP

D, L, STEPS = 32, 4, 20
SCALES = (20.0, 1.0, 1.0, 0.05)


def data() -> tuple[jax.Array, jax.Array]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  x, y = load_digits(return_X_y=True)
  x = np.pad(x / 16.0, ((0, 0), (0, D - 64))) if D > 64 else x[:, :D] / 16.0
  return jnp.asarray(x[:512], jnp.float32), jnp.asarray(y[:512])


def unroll(tree: dict) -> dict:
  """One leaf per block: ``block{i}/...``; the head as it is."""
  out = {f'block{i}': jax.tree.map(lambda a, i=i: a[i], tree['blocks'])
         for i in range(L)}
  out['head'] = tree['head']
  return out


def setup():
  """The model's pure params and one jitted gradient function, shared by the
  three runs (the same model, so it compiles once)."""
  with nnx.use_eager_sharding(False):
    model = StackedResidualMLP(D, L, 10, nnx.Rngs(0))
  k = model.blocks.fc1.kernel
  k[...] = k[...] * jnp.asarray(SCALES)[:, None, None]
  graphdef, params = nnx.split(model, nnx.Param)
  x, y = data()

  def loss(p):
    logits = nnx.merge(graphdef, p)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return model, nnx.to_pure_dict(params), jax.jit(jax.grad(loss))


def run(params: dict, grad_fn, layer_axes, stacked: bool
        ) -> tuple[dict, optax_lambc.TrustRatioStats]:
  """20 steps; returns (final params as unrolled blocks, first-step stats)."""
  if not stacked:
    tx, p = optax_lambc.lambc(1e-2), unroll(params)
    grads = lambda p: unroll(grad_fn(_restack(p)))
  else:
    tx, p = optax_lambc.lambc(1e-2, layer_axes=layer_axes), params
    grads = grad_fn
  state, first, update = tx.init(p), None, jax.jit(tx.update)
  for _ in range(STEPS):
    updates, state = update(grads(p), state, p)
    p = optax.apply_updates(p, updates)
    first = first or optax_lambc.trust_ratio_stats(state)
  return (p if not stacked else unroll(p)), first


def _restack(p_u: dict) -> dict:
  blocks = jax.tree.map(lambda *xs: jnp.stack(xs),
                        *[p_u[f'block{i}'] for i in range(L)])
  return {'blocks': blocks, 'head': p_u['head']}


def _fmt(xs) -> str:
  return '[' + ', '.join(f'{float(x):.3g}' for x in xs) + ']'


def main() -> dict:
  model, params, grad_fn = setup()
  axes = optax_lambc.layer_axes_from_flax(model)
  reference, ref_stats = run(params, grad_fn, None, stacked=False)
  out = {}
  for name, layer_axes in (('per leaf', None), ('layer_axes', axes)):
    final, stats = run(params, grad_fn, layer_axes, stacked=True)
    drift = [float(jnp.linalg.norm(final[f'block{i}']['fc1']['kernel'] -
                                   reference[f'block{i}']['fc1']['kernel']) /
                   jnp.linalg.norm(reference[f'block{i}']['fc1']['kernel']))
             for i in range(L)]
    raw = stats.by_path('raw')
    ratios = np.atleast_1d(raw['blocks/fc1/kernel'])
    n = stats.values.shape[1]
    out[name] = {'ratios': n, 'fc1_raw': ratios.tolist(), 'drift': drift}
    print(f'stacked, {name:>10}: {n:3d} trust ratios; fc1 raw ratio(s) '
          f'{_fmt(ratios)}; after {STEPS} steps each block\'s fc1 is off the '
          f'unrolled model by {_fmt(drift)} x its norm')
  ref_raw = ref_stats.by_path('raw')
  ref_ratios = [float(ref_raw[f'block{i}/fc1/kernel']) for i in range(L)]
  n_ref = ref_stats.values.shape[1]
  out['unrolled'] = {'ratios': n_ref, 'fc1_raw': ref_ratios}
  print(f'unrolled (reference): {n_ref:3d} trust ratios; fc1 raw ratios '
        f'{np.round(ref_ratios, 3).tolist()}')
  return out


if __name__ == '__main__':
  main()
