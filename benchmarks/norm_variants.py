"""How should a LAMB step take its per-layer norms on XLA:CPU? Measured.

A hand-written LAMBC step (Adam moments, decoupled decay, clipped ratio) whose
only difference is how the two squared norms per leaf are reduced, timed
against optax.adamw in the same process, donated and not:

* ``plain``: ``jnp.sum(x * x)`` (what optax_lambc uses, via jnp.linalg.norm);
* ``vdot``: ``jnp.vdot(x, x)``;
* ``rows``: a two-stage sum over 256 rows, then over the row sums;
* ``variadic``: one variadic ``lax.reduce`` producing both sums in one pass.

Run with ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` to see the same
without XLA's YNNPACK reduction fusions.

  python -m benchmarks.norm_variants [--tree resnet18] [--runs 20]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from benchmarks.step_time import TREES, make_params

B1, B2, EPS, LR, WD = 0.9, 0.999, 1e-6, 1e-3, 1e-2


def _plain(p, u):
  return jnp.sum(p * p), jnp.sum(u * u)


def _vdot(p, u):
  return jnp.vdot(p, p), jnp.vdot(u, u)


def _rows(p, u):
  def s(x):
    k = 256 if x.size % 256 == 0 and x.size >= 4096 else 1
    return jnp.sum(jnp.sum(x.reshape(k, -1), axis=1))
  return s(p * p), s(u * u)


def _variadic(p, u):
  z = jnp.zeros((), jnp.float32)
  return jax.lax.reduce((p * p, u * u), (z, z),
                        lambda a, b: (a[0] + b[0], a[1] + b[1]),
                        tuple(range(p.ndim)))


VARIANTS = {'plain': _plain, 'vdot': _vdot, 'rows': _rows,
            'variadic': _variadic}


def lambc_step(sq_norms):
  """(init, step) of a hand-written LAMBC whose norms use ``sq_norms``."""
  def init(p):
    return (jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, p),
            jax.tree.map(jnp.zeros_like, p))  # two buffers: both donated

  def step(p, s, g):
    c, m, v = s
    c = c + 1
    bc1, bc2 = 1 - B1 ** c, 1 - B2 ** c
    m = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, m, g)
    v = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, v, g)

    def leaf(p, m, v):
      u = (m / bc1) / (jnp.sqrt(v / bc2) + EPS) + WD * p
      pn2, un2 = sq_norms(p, u)
      r = jnp.where((pn2 == 0) | (un2 == 0), 1.0, jnp.sqrt(pn2 / un2))
      return p - LR * jnp.minimum(r, 1.0) * u

    return jax.tree.map(leaf, p, m, v), (c, m, v)

  return init, step


def adamw_step():
  opt = optax.adamw(LR, weight_decay=WD)

  def step(p, s, g):
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  return opt.init, step


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--tree', default='resnet18')
  parser.add_argument('--runs', type=int, default=20)
  args = parser.parse_args(argv)
  params0 = make_params(TREES[args.tree]())
  grads = jax.tree.map(lambda p: p * 0.1 + 0.01, params0)
  fns = {'adamw': adamw_step(),
         **{k: lambc_step(f) for k, f in VARIANTS.items()}}
  for donate in (True, False):
    carry, steps, times = {}, {}, {k: [] for k in fns}
    for k, (init, step) in fns.items():
      p = jax.tree.map(jnp.copy, params0)
      s = init(p)
      f = jax.jit(step, donate_argnums=(0, 1) if donate else ()).lower(
          p, s, grads).compile()
      for _ in range(3):
        p, s = f(p, s, grads)
      carry[k], steps[k] = (p, s), f
    for _ in range(args.runs):
      for k in fns:
        p, s = carry[k]
        t = time.perf_counter()
        p, s = steps[k](p, s, grads)
        jax.block_until_ready(p)
        times[k].append(time.perf_counter() - t)
        carry[k] = (p, s)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(('donated' if donate else 'not donated') + f' ({args.tree}):')
    for k, v in med.items():
      print(f'  {k:<10}{v:8.2f} ms {v / med["adamw"]:6.2f}x adamw')


if __name__ == '__main__':
  main()
