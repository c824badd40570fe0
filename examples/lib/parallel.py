"""Data-parallel execution modes over a device mesh.

* ``jit`` (default): ``jax.jit`` over a 1-D ``Mesh`` with axis ``data``; the
  batch is sharded on it and params/optimizer state are replicated. The mesh
  uses ``AxisType.Auto`` deliberately: GSPMD propagates shardings and the
  trust-ratio norms and BatchNorm means are global with no code change.
* ``fsdp``: as ``jit``, but the params and what mirrors them in the optimizer
  state (Adam's moments, found with ``optax.tree.map_params``) are sharded
  over ``data`` too, each leaf on its largest dimension divisible by the
  device count; counts and per-layer vectors stay replicated. GSPMD gathers
  weights for the forward pass and keeps norms global (one all-reduce for
  every layer's trust-ratio norms).
* ``pmap``: ``jax.pmap`` with ``lax.pmean`` of the gradients (pmap is in
  maintenance mode since JAX 0.8, implemented on jit + shard_map; kept for
  users who still use it).
* ``shard_map``: ``jax.shard_map`` over the mesh with replicated params and
  explicit ``pmean``.

Multi-host: every process runs the same program; ``jax.distributed`` has been
initialised by the caller. Each process feeds its local share of the batch and
``jax.make_array_from_process_local_data`` assembles the global array.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from examples.lib.config import PARALLEL_MODES as MODES


def fsdp_spec(x: Any, n: int) -> P:
  """Shard the largest dimension divisible by ``n``; replicate otherwise."""
  shape = np.shape(x)
  dims = [i for i in np.argsort(shape)[::-1] if shape[i] % n == 0 and
          shape[i] >= n]
  if not dims:
    return P()
  spec = [None] * len(shape)
  spec[dims[0]] = 'data'
  return P(*spec)


@dataclasses.dataclass
class Parallel:
  """How arrays are placed and steps are compiled for one mode."""

  mode: str
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation | None = None  # fsdp: what to shard

  @classmethod
  def create(cls, mode: str, global_batch_size: int) -> 'Parallel':
    if mode not in MODES:
      raise ValueError(f'unknown parallel mode {mode!r}; known: '
                       f'{", ".join(MODES)}')
    n = jax.device_count()
    if global_batch_size % n:
      raise ValueError(f'global_batch_size {global_batch_size} is not '
                       f'divisible by the {n} devices')
    mesh = jax.make_mesh((n,), ('data',), axis_types=(AxisType.Auto,))
    return cls(mode, mesh)

  @property
  def axis_name(self) -> str | None:
    """The axis name collectives need inside the step (pmap, shard_map)."""
    return 'data' if self.mode in ('pmap', 'shard_map') else None

  def state_shardings(self, state):
    """Replicated; under ``fsdp`` the params and the optimizer state that
    mirrors them sharded (``fsdp_spec``), the rest replicated (a prefix
    tree: one sharding stands for a whole non-params subtree)."""
    replicated = NamedSharding(self.mesh, P())
    if self.mode != 'fsdp':
      return jax.tree.map(lambda _: replicated, state)
    n = self.mesh.devices.size
    params = jax.tree.map(lambda x: NamedSharding(self.mesh, fsdp_spec(x, n)),
                          state.params)
    opt = optax.tree.map_params(self.tx, lambda _, sh: sh, state.opt_state,
                                params, transform_non_params=lambda _:
                                replicated)
    return state._replace(step=replicated, params=params, opt_state=opt,
                          batch_stats=jax.tree.map(lambda _: replicated,
                                                   state.batch_stats))

  def place_state(self, state):
    """Puts a host/device state where the step expects it."""
    if self.mode == 'pmap':
      # A leading axis of local-device length; pmap shards it on first use
      # (jax.device_put_replicated is gone since JAX 0.8).
      n = jax.local_device_count()
      return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x),
                                                    (n,) + np.shape(x)), state)
    return jax.device_put(state, self.state_shardings(state))

  def unplace_state(self, state):
    """A single-copy view of the state (first replica under pmap)."""
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: x[0], state)
    return state

  def for_eval(self) -> 'Parallel':
    """How to feed evaluation: pmap keeps a replicated copy of the state,
    whose single copy is evaluated with the mesh like ``jit``."""
    return Parallel('jit', self.mesh) if self.mode == 'pmap' else self

  def abstract_state(self, single_state):
    """Shapes, dtypes and target shardings of a single-copy state (what a
    checkpoint is restored into; pmap restores a host copy and then
    replicates it)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            np.shape(x), x.dtype, sharding=None if self.mode == 'pmap' else
            getattr(x, 'sharding', None)), single_state)

  def place_restored(self, state):
    """A restored single-copy state, placed for the step (pmap: replicated;
    the other modes restored it into its shardings already)."""
    return self.place_state(state) if self.mode == 'pmap' else state

  def shard_batch(self, local_batch: dict):
    """This process's part of the batch -> the global batch on the mesh."""
    if self.mode == 'pmap':
      n = jax.local_device_count()
      return jax.tree.map(
          lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]),
          local_batch)
    sharding = NamedSharding(self.mesh, P('data'))
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x),
        local_batch)

  def compile_step(self, step_fn, state):
    """``step(state, batch) -> (state, metrics)`` for this mode; the state is
    donated."""
    if self.mode == 'pmap':
      return jax.pmap(step_fn, axis_name='data', donate_argnums=(0,))
    if self.mode == 'shard_map':
      step_fn = jax.shard_map(step_fn, mesh=self.mesh,
                              in_specs=(P(), P('data')), out_specs=(P(), P()))
    state_sh = self.state_shardings(state)
    batch_sh = NamedSharding(self.mesh, P('data'))
    return jax.jit(step_fn, in_shardings=(state_sh, batch_sh),
                   out_shardings=(state_sh, NamedSharding(self.mesh, P())),
                   donate_argnums=(0,))
