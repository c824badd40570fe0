"""``python -m examples.main`` with test-only faults (kept out of the library).

  FAULT_NAN_AT_STEP=N        the batch of step N is NaN (its image, or an LM's
                             weights), as a corrupt record would be;
  FAULT_KILL_DURING_SAVE=N   SIGKILL right after orbax has started writing the
                             step-N checkpoint, before it is finished.

Run as ``python tests/scripts/faulty_train.py PRESET --workdir ...`` from the
repository root, with the arguments of ``examples.main``.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from examples import main as train_cli  # noqa: E402
from examples.lib import checkpoints  # noqa: E402
from examples.lib import train as train_lib  # noqa: E402


class NaNAtStep:
  """A train dataset whose batch ``step`` is NaN."""

  def __init__(self, dataset, step: int):
    self.dataset, self.step = dataset, step

  def __getitem__(self, i):
    batch = self.dataset[i]
    if i == self.step:
      key = 'weights' if 'weights' in batch else 'image'
      batch = dict(batch, **{key: batch[key] * np.nan})
    return batch


def inject() -> None:
  nan_at = os.environ.get('FAULT_NAN_AT_STEP')
  if nan_at is not None:
    build = train_lib.build

    def build_with_nan(config):
      exp = build(config)
      exp.train_ds = NaNAtStep(exp.train_ds, int(nan_at))
      return exp

    train_lib.build = build_with_nan
  kill_at = os.environ.get('FAULT_KILL_DURING_SAVE')
  if kill_at is not None:
    manager = checkpoints.manager

    def killing_manager(workdir):
      mngr = manager(workdir)
      save = mngr.save

      def save_then_kill(step, *args, **kwargs):
        out = save(step, *args, **kwargs)
        if step == int(kill_at):
          os.kill(os.getpid(), signal.SIGKILL)
        return out

      mngr.save = save_then_kill
      return mngr

    checkpoints.manager = killing_manager


if __name__ == '__main__':
  inject()
  train_cli.main()
