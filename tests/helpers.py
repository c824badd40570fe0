"""Shared test fixtures: random multi-leaf trees and a lock-step runner."""

import os

import jax
import jax.numpy as jnp
import numpy as np


# (jit, dtype, rtol) of the reference comparisons: jitted in float32 and
# float64, eager in float32 (eager float64 adds nothing the other two miss).
MODES = [(True, np.float32, 1e-5), (True, np.float64, 1e-10),
         (False, np.float32, 1e-5)]
MODE_IDS = ['jit-f32', 'jit-f64', 'nojit-f32']


def matrix(cases: list, also: int = 2) -> list:
  """``pytest.param(*case, jit, dtype, rtol)`` for every case jitted in
  float32, and for the first ``also`` cases in the other modes too: every
  case meets the arithmetic once, every mode meets several cases."""
  import pytest  # pylint: disable=g-import-not-at-top
  out = []
  for i, case in enumerate(cases):
    case = case if isinstance(case, tuple) else (case,)
    for j, (mode, name) in enumerate(zip(MODES, MODE_IDS, strict=True)):
      if j == 0 or i < also:
        out.append(pytest.param(*case, *mode,
                                id=f'{name}-{"-".join(map(str, case))}'))
  return out


def make_tree(seed: int, dtype=np.float32) -> dict:
  """A params tree with the leaf kinds that matter for layer-wise methods.

  Conv kernels, dense kernels, biases, a scalar, a zero-initialised leaf, and
  leaves whose scales differ by 1e4 so that every bound really triggers.
  """
  rng = np.random.default_rng(seed)
  big, small = 10.0 ** rng.uniform(1, 2), 10.0 ** rng.uniform(-3, -2)
  tree = {
      'conv': {'kernel': rng.normal(size=(3, 3, 4, 8)) * 0.1,
               'bias': np.zeros(8)},
      'dense': {'kernel': rng.normal(size=(16, 10)) * big,
                'bias': rng.normal(size=(10,)) * small},
      'scalar': np.asarray(rng.normal()),
      'zero_init': np.zeros((5, 5)),
      'tiny': rng.normal(size=(7, 3)) * small,
  }
  return jax.tree.map(lambda x: np.asarray(x, dtype), tree)


class GradFn:
  """A deterministic gradient: pull towards a target, plus per-step noise.

  Contracting dynamics, so tiny rounding differences between implementations
  decay instead of growing. Works on lists of NumPy leaves.
  """

  def __init__(self, leaves, seed: int, steps: int):
    rng = np.random.default_rng(seed + 1000)
    self.target = [rng.normal(size=p.shape).astype(p.dtype) *
                   max(float(np.abs(p).max()), 1e-2) for p in leaves]
    self.noise = [[(rng.normal(size=p.shape) * (1 + np.abs(p).max()))
                   .astype(p.dtype) for p in leaves] for _ in range(steps)]

  def __call__(self, leaves, step):
    return [(np.asarray(0.5, p.dtype) * (p - t) + n).astype(p.dtype)
            for p, t, n in zip(leaves, self.target, self.noise[step],
                               strict=True)]


def run_lockstep(opt, ref, params_tree, steps, seed=0, jit=True,
                 check_every=10, rtol=1e-5, on_step=None, on_step_every=3):
  """Runs a JAX optimizer and a NumPy reference side by side and compares.

  Both get gradients from the same rule applied to their own params. Params
  are compared every ``check_every`` steps and at the end; ``on_step(state,
  ref, step)`` may add checks (e.g. on the telemetry), every
  ``on_step_every`` steps and at the end. Without ``jit`` at
  most 20 steps run: eager steps are slow, and the same arithmetic runs in
  every step, so a short run shows their agreement as well.
  """
  steps = steps if jit else min(steps, 20)
  leaves, treedef = jax.tree.flatten(params_tree)
  grad_fn = GradFn(leaves, seed, steps)
  params = jax.tree.map(jnp.asarray, params_tree)
  state = opt.init(params)

  def step_fn(grads, state, params):
    import optax  # pylint: disable=g-import-not-at-top
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step_fn = jax.jit(step_fn) if jit else step_fn
  ref_params = [np.array(x) for x in leaves]
  for t in range(steps):
    jax_leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    grads = jax.tree.unflatten(treedef, grad_fn(jax_leaves, t))
    params, state = step_fn(grads, state, params)
    ref_params = ref.step(grad_fn(ref_params, t), ref_params)
    if on_step is not None and (t % on_step_every == 0 or t == steps - 1):
      on_step(state, ref, t)
    if (t + 1) % check_every == 0 or t == steps - 1:
      for path_leaf, r in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                              ref_params, strict=True):
        path, got = path_leaf
        scale = max(float(np.abs(r).max()), 1e-3)
        np.testing.assert_allclose(
            np.asarray(got), r, rtol=rtol, atol=rtol * scale,
            err_msg=f'step {t}, leaf {jax.tree_util.keystr(path)}')
  return params, state


def own_compilation_cache(env: dict, tag: str) -> dict:
  """``env`` with a JAX compilation cache directory of its own (``tag``).

  For a training process that runs beside another or may be killed: JAX
  writes a cache entry in place, without a lock unless a cache size limit is
  set, so a process reading beside the writer, or any later one after a
  SIGKILL mid-write, reads a truncated entry and warns. The directory is
  the suite's (``tests/conftest.py``) with ``-tag`` appended, so processes
  with one tag still share compiles across tests (and a truncated entry
  stays among them); with no cache configured ``env`` is returned as is.
  """
  base = env.get('JAX_COMPILATION_CACHE_DIR')
  return env if not base else dict(
      env, JAX_COMPILATION_CACHE_DIR=f'{base}-{tag}')


def checked_compilation_cache(env: dict) -> dict:
  """``env`` for a process whose output a test checks for warnings.

  Its cache directory is this xdist worker's own (:func:`own_compilation_cache`
  tagged with the worker), which no process of the other worker writes;
  a worker's tests, and so these processes, run one at a time. Such a process
  never reads an entry while another writes it.
  """
  return own_compilation_cache(
      env, 'checked-' + os.environ.get('PYTEST_XDIST_WORKER', 'main'))
