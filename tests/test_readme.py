"""Every ``python -m examples...`` command in the docs runs as written.

Each command is taken from the ```bash blocks of the README, ``docs/*.md``
and the examples' and benchmarks' READMEs, run in a scratch
directory with a step limit appended (``--set num_train_steps=2`` for
training, ``--fast`` for the demo), and must succeed. Commands that need a
prepared tfds dataset (``data_dir=...``) cannot download one on an offline
machine: they must stop at once with the clear "not prepared" error (exit 2),
before any compute. Templated lines (with ``|`` or ``[...]``) are skipped.
A benchmark command runs as written when it has ``--tiny``; the others need
hardware, the ``.[aot]`` extra or many minutes, so their ``--help`` runs (the
CLI exists and parses).
"""

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest
from helpers import checked_compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


PAGES = ['README.md', 'examples/README.md', 'benchmarks/README.md'] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(
        os.path.join(ROOT, 'docs', '**', '*.md'), recursive=True))


def readme_commands() -> list[str]:
  """The ``python -m examples...`` / ``benchmarks...`` commands of every
  page's ```bash blocks."""
  commands = []
  for page in PAGES:
    with open(os.path.join(ROOT, page)) as f:
      text = f.read()
    for block in re.findall(r'```bash\n(.*?)```', text, re.S):
      for line in block.splitlines():
        line = line.split('#')[0].strip()
        match = re.search(r'(python -m (examples|benchmarks)\.\S+.*)$', line)
        if match and not re.search(r'[|\[]', match.group(1)):
          commands.append(match.group(1).strip())
  return list(dict.fromkeys(commands))


COMMANDS = readme_commands()


def test_the_readme_has_the_commands_we_expect():
  modules = {c.split()[2] for c in COMMANDS}
  assert {'examples.demo', 'examples.main', 'examples.plot'} <= modules
  assert len(COMMANDS) >= 8


def _limited(command: str) -> list[str]:
  args = shlex.split(command)
  module = args[2]
  if module.startswith('benchmarks.') and '--tiny' not in args:
    return [sys.executable, '-m', module, '--help']
  if module == 'examples.main' and '--help' not in args:
    args += ['--set', 'num_train_steps=2', '--set', 'progress=false',
             '--set', 'checkpoint_every_steps=0']
  if module == 'examples.demo':
    args += ['--fast']
  return [sys.executable] + args[1:]


@pytest.mark.parametrize('command', COMMANDS)
def test_readme_command_runs(command, tmp_path):
  env = checked_compilation_cache(dict(
      os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
      ALLOW_MULTIPLE_LIBTPU_LOAD='1'))
  env.pop('XLA_FLAGS', None)
  if 'examples.plot' in command:  # plots the digits run the README shows
    digits = next(c for c in COMMANDS if 'examples.main digits' in c)
    subprocess.run(_limited(digits), cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=600)
  out = subprocess.run(_limited(command), cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
  if 'data_dir=' in command:
    assert out.returncode == 2, out.stderr[-2000:]
    assert 'not prepared' in out.stderr and 'Traceback' not in out.stderr
  else:
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # A new user's first commands print no warning (the mock-data cifar10
    # run included: tfds's metadata message is filtered).
    noisy = [line for line in (out.stdout + out.stderr).splitlines()
             if re.search(r'warn', line, re.I)]
    assert not noisy, noisy[:5]
