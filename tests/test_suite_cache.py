"""The suite's compilation cache (``tests/conftest.py``, ``docs/testing.md``):
a run directory given in ``OPTAX_LAMBC_TEST_RUN_DIR`` is used and kept, so a
rerun loads what an earlier run compiled.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One small test that compiles a few programs.
TEST = 'tests/library/test_trust_ratio.py::test_float64_stays_float64'


def _pytest(run_dir: str) -> subprocess.CompletedProcess:
  """The test in a fresh pytest whose run directory is ``run_dir``."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(
      ('PYTEST_', 'OPTAX_LAMBC_TEST_', 'JAX_COMPILATION_CACHE', 'JAX_PERSIST'))}
  env['OPTAX_LAMBC_TEST_RUN_DIR'] = run_dir
  return subprocess.run([sys.executable, '-m', 'pytest', '-q', TEST],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)


def _entries(run_dir: str) -> list[str]:
  return [name for _, _, names in os.walk(run_dir) for name in names
          if name.endswith('-cache')]


def test_a_given_run_directory_is_used_and_kept(tmp_path):
  run_dir = str(tmp_path / 'kept')
  out = _pytest(run_dir)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  entries = _entries(run_dir)
  assert entries, os.listdir(tmp_path)
  # The rerun's programs have the keys the first run wrote (no path or time
  # in them): it adds no entry, so it loads every one.
  out = _pytest(run_dir)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert sorted(_entries(run_dir)) == sorted(entries)
