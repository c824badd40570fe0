"""optax's own optimizer batteries, run against lambc and larc.

The installed optax wheel ships ``optax/_src/alias_test.py`` (the optimizer
battery: optimization, ``tree.map_params``, extra args, ``inject_hyperparams``,
dtypes, ``MultiSteps``, state stability) and ``optax/contrib/_common_test.py``.
Their source is run unchanged except for the list of optimizers under test,
which becomes ours; pytest collects their test classes from this module.

A bound of 1 caps each step at lr·‖u‖, so the bounded variants run at lr 1e-2
where ``optax.lamb``'s entry uses 1e-3; the learning rates are otherwise
optax's for the nearest optimizer.
"""

import importlib.util
import re
import types

import optax
from optax import contrib
from optax._src import alias

import optax_lambc

OURS = (
    {'opt_name': 'lambc', 'opt_kwargs': {'learning_rate': 1e-2}},
    {'opt_name': 'lambc',
     'opt_kwargs': {'learning_rate': 1e-2, 'min_trust_ratio': 0.01,
                    'max_trust_ratio': 10.0, 'weight_decay': 1e-4}},
    # With the clip, LARC's step is at most momentum SGD's, which on the
    # battery's Rosenbrock target needs lr <= 1e-3 to converge in complex64.
    {'opt_name': 'larc', 'opt_kwargs': {'learning_rate': 1e-3,
                                        'trust_coefficient': 0.02}},
)
# mechanize around lambc, at optax's lr for its lamb entry. optax leaves lars
# out ("TODO: make LARS ... work with mechanic"), and so do we for larc.
MECHANIZED = (
    {'opt_name': 'lambc', 'opt_kwargs': {'learning_rate': 1.0}},
)
NAMES = types.SimpleNamespace(**{
    **{k: getattr(alias, k) for k in dir(alias) if not k.startswith('_')},
    'lambc': optax_lambc.lambc, 'larc': optax_lambc.larc})


def _load(module: str, **lists: list) -> types.ModuleType:
  """optax's test module with each named list literal replaced."""
  spec = importlib.util.find_spec(module)
  with open(spec.origin, encoding='utf-8') as f:
    source = f.read()
  for name, value in lists.items():
    op = '+=' if name.endswith('+') else '='
    name = name.rstrip('+')
    pattern = re.compile(rf'^{name} {re.escape(op)} [(\[].*?^[)\]]\n',
                         re.M | re.S)
    assert pattern.search(source), f'{name} {op} not found in {spec.origin}'
    source = pattern.sub(f'{name} {op} {value!r}\n', source, count=1)
  mod = types.ModuleType(f'{module}_with_lambc')
  mod.__file__ = spec.origin
  exec(compile(source, spec.origin, 'exec'), mod.__dict__)  # noqa: S102
  return mod


_alias_test = _load('optax._src.alias_test', _OPTIMIZERS_UNDER_TEST=OURS)
_alias_test.alias = NAMES
# optax's own wrappers around sgd are not ours to test; mechanize (the wrapper
# the battery applies to every base optimizer) runs around lambc.
_common_test = _load('optax.contrib._common_test', **{
    '_MAIN_OPTIMIZERS_UNDER_TEST': list(OURS),
    '_MAIN_OPTIMIZERS_UNDER_TEST+': [], '_BASE_OPTIMIZERS': list(MECHANIZED)})
_common_test.contrib = types.SimpleNamespace(
    **{k: getattr(contrib, k) for k in dir(contrib) if not k.startswith('_')},
    lambc=optax_lambc.lambc, larc=optax_lambc.larc)


class TestOptaxAliasBattery(_alias_test.AliasTest):
  """optax's ``AliasTest`` with lambc/larc as the optimizers under test."""


class TestOptaxContribBattery(_common_test.ContribTest):
  """optax's ``contrib/_common_test.py`` checks, with lambc/larc."""


def test_battery_runs_our_optimizers():
  assert _alias_test._OPTIMIZERS_UNDER_TEST == OURS
  main = [o['opt_name'] for o in _common_test._ALL_OPTIMIZERS_UNDER_TEST]
  assert main == ['lambc'] * 2 + ['larc'] + ['lambc'], main
  assert _alias_test.alias.lamb is optax.lamb  # optax's own names kept
