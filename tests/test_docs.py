"""The documentation runs as written.

Every ```python block of the README, of ``docs/*.md`` and of the examples'
and benchmarks' READMEs is extracted from the Markdown and run: the blocks of
one page in order, in one namespace (so a later block may use an earlier
block's names, and nothing else is defined). The API reference is built with
Sphinx, warnings as errors. (The ``python -m examples...`` commands of the
same pages are run by ``test_readme.py``.)
"""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(
    ['README.md', 'examples/README.md', 'benchmarks/README.md'] +
    [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs',
                                                              '**', '*.md'),
                                                 recursive=True)])


def python_blocks(page: str) -> list[str]:
  with open(os.path.join(ROOT, page), encoding='utf-8') as f:
    return re.findall(r'^```python\n(.*?)^```', f.read(), re.S | re.M)


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


def test_the_pages_we_expect_have_code():
  assert {'README.md', 'docs/stacked_layers.md', 'docs/telemetry.md'} <= set(
      PAGES_WITH_CODE)
  assert len(python_blocks('README.md')) >= 5


@pytest.mark.parametrize('page', PAGES_WITH_CODE)
def test_python_blocks_run_as_copied(page, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  namespace = {'__name__': '__main__'}
  for i, block in enumerate(python_blocks(page)):
    exec(compile(block, f'{page}[block {i}]', 'exec'), namespace)  # pylint: disable=exec-used


def test_api_reference_builds_without_warnings(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b',
       'html', os.path.join(ROOT, 'docs'), str(tmp_path / 'html')],
      capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 0, out.stderr[-3000:]
  api = (tmp_path / 'html' / 'api.html').read_text()
  for name in ('lambc', 'scale_by_clipped_trust_ratio', 'trust_ratio_stats',
               'layer_axes_from_flax', 'running_stat_bounds'):
    assert f'optax_lambc.{name}' in api, name
