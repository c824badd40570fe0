"""The optimizer state saves with orbax too (the examples' checkpointer);
flax.serialization, pickle and NumPy are in tests/library/test_pure_core.py."""

import os

import pytest

from library.test_pure_core import CONFIGS, check_restored


def _orbax(tmp_path):
  def restore(state):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    checkpointer = ocp.StandardCheckpointer()
    path = os.path.join(tmp_path, 'state')
    checkpointer.save(path, state)
    checkpointer.wait_until_finished()
    yield 'orbax', checkpointer.restore(path, state)
  return restore


@pytest.mark.parametrize('config', CONFIGS)
def test_state_saves_and_restores_with_orbax(config, tmp_path):
  check_restored(CONFIGS[config](), _orbax(str(tmp_path)))
