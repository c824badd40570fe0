"""Makes the test helpers importable and keeps JAX on the CPU."""

import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(__file__))

# The suite's longest tests (training subprocesses, simulated devices, the
# study's tiny mode), started first: with `-n 2` the two workers then share
# the short tests at the end instead of one waiting for the other. Matched by
# node id prefix; the order among them is longest first.
LONG_FIRST = (
    'tests/test_faults.py::test_sigkill_at_random_moments',
    'tests/test_parallel.py::test_every_parallel_mode',
    'tests/test_faults.py::test_two_processes_survive',
    'tests/test_study_lm.py::test_lm_batch_study_runs_end_to_end',
    'tests/test_examples.py::test_kill_and_resume',
    'tests/test_parallel.py::test_language_model_step',
    'tests/test_benchmarks.py::test_lm_tokens',
    'tests/test_parallel.py::test_two_processes_match',
)


def pytest_collection_modifyitems(config, items):
  del config

  def rank(item):
    for i, prefix in enumerate(LONG_FIRST):
      if item.nodeid.startswith(prefix):
        return i
    return len(LONG_FIRST)

  items.sort(key=rank)  # stable: every other test keeps its order
