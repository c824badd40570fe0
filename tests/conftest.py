"""Makes the test helpers importable, keeps JAX on the CPU and shares
compiled programs between tests.

The suite trains the same small models many times, in-process and in
training subprocesses (which inherit the environment). JAX's persistent
compilation cache lets every compile after the first load the executable
instead: the same XLA program, so results are unchanged. The first process
(pytest, or xdist's controller) makes one fresh run directory and removes it
at the end; its cache directory there is inherited by the xdist workers and
by every process they start, so all of them share one cache (a test that
starts processes which run side by side, or kills one, gives them their own:
``helpers.own_compilation_cache``). ``docs/testing.md`` gives the measured
gain and the one race left. Set ``OPTAX_LAMBC_TEST_RUN_DIR`` to a directory
you keep and it is used and kept, so a rerun loads what an earlier run
compiled; an existing ``JAX_COMPILATION_CACHE_DIR`` is used as it is.
"""

import os
import shutil
import sys
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_MADE_RUN_DIR = False
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  # Made by the first process (pytest, or xdist's controller), inherited by
  # the workers (which keep its cache directory: see above) and removed by
  # its maker at the end; never made when given.
  if 'OPTAX_LAMBC_TEST_RUN_DIR' not in os.environ:
    os.environ['OPTAX_LAMBC_TEST_RUN_DIR'] = tempfile.mkdtemp(
        prefix='optax_lambc-')
    _MADE_RUN_DIR = True
  _RUN_DIR = os.environ['OPTAX_LAMBC_TEST_RUN_DIR']
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(_RUN_DIR,
                                                        'jax-cache')
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
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
    'tests/test_examples.py::test_reproduce_harness',
    'tests/test_examples.py::test_runs_print_no_warnings',
    'tests/test_faults.py::test_ctrl_c',
)


def pytest_collection_modifyitems(config, items):
  del config

  def rank(item):
    for i, prefix in enumerate(LONG_FIRST):
      if item.nodeid.startswith(prefix):
        return i
    return len(LONG_FIRST)

  items.sort(key=rank)  # stable: every other test keeps its order


def pytest_unconfigure(config):
  del config
  if _MADE_RUN_DIR:
    shutil.rmtree(os.environ['OPTAX_LAMBC_TEST_RUN_DIR'], ignore_errors=True)
