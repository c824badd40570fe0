"""Orbax checkpoints of a training state: save, and restore into shardings.

A checkpoint is a structured tree ``{'params', 'batch_stats', 'opt_state',
'step'}`` (readable paths such as ``opt_state/0/mu/conv1/kernel``, bound-policy
state included) plus JSON metadata (data position, config). Orbax writes to a
temporary directory and renames it when done, so a kill mid-write leaves
nothing that is restored.
"""

import dataclasses
import os

from examples.lib.config import Config
from examples.lib.parallel import Parallel


def manager(workdir: str):
  """A manager for ``WORKDIR/checkpoints`` keeping the last two."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def as_tree(state) -> dict:
  """The checkpointed tree: readable paths, loadable by other tools."""
  return {'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state, 'step': state.step}


def save(mngr, parallel: Parallel, config: Config, state) -> None:
  """Saves ``state`` at its step and waits until the write is complete."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  single = parallel.unplace_state(state)
  step = int(single.step)
  meta = {'step': step, 'data_index': step,
          'config': dataclasses.asdict(config)}
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(as_tree(single)),
      meta=ocp.args.JsonSave(meta)))
  mngr.wait_until_finished()


def restore(mngr, parallel: Parallel, template):
  """``(state, data index)`` of the latest complete checkpoint, or None.

  Every array is read straight into the sharding the step expects (each host
  reads only its shards: no full host copy under FSDP); ``template`` is a
  placed state of the right structure.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  latest = mngr.latest_step()
  if latest is None:
    return None
  abstract = parallel.abstract_state(as_tree(parallel.unplace_state(
      template)))
  restored = mngr.restore(latest, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  tree = restored['state']
  state = type(template)(tree['step'], tree['params'], tree['batch_stats'],
                         tree['opt_state'])
  return parallel.place_restored(state), restored['meta']['data_index']
