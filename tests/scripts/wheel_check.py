"""Run by ``.ci/run`` with a fresh virtualenv's Python, outside the checkout:
the installed wheel imports and the README's first snippet runs.

  python tests/scripts/wheel_check.py README.md

Fails if ``optax_lambc`` comes from anywhere but that environment's
site-packages (a source tree on the path would prove nothing).
"""

import re
import sys
import sysconfig

import optax_lambc

where = optax_lambc.__file__
assert where.startswith(sysconfig.get_paths()['purelib']), where
with open(sys.argv[1], encoding='utf-8') as f:
  first = re.findall(r'```python\n(.*?)```', f.read(), re.S)[0]
exec(compile(first, 'README.md (first Python block)', 'exec'), {})  # noqa: S102
print(f'optax_lambc {optax_lambc.__version__} from {where}: the README\'s '
      'first snippet ran')
