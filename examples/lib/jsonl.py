"""JSON lines that strict parsers accept, with infinities and NaN kept.

``json.dumps`` writes ``Infinity`` and ``NaN`` by default: valid JavaScript,
not JSON, so strict parsers (``jq``, most non-Python readers) reject the line.
Non-finite floats are written as the strings ``"Infinity"``, ``"-Infinity"``
and ``"NaN"`` instead (what ``float()`` reads back), and :func:`loads` turns
them back into floats. It also reads older files with the bare tokens.
"""

import json
import math
from typing import Any

_NONFINITE = {'Infinity': math.inf, '-Infinity': -math.inf, 'NaN': math.nan}


def _encode(x: Any) -> Any:
  if isinstance(x, float) and not math.isfinite(x):
    return 'NaN' if math.isnan(x) else ('Infinity' if x > 0 else '-Infinity')
  if isinstance(x, dict):
    return {k: _encode(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_encode(v) for v in x]
  return x


def _decode(x: Any) -> Any:
  if isinstance(x, str):
    return _NONFINITE.get(x, x)
  if isinstance(x, dict):
    return {k: _decode(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_decode(v) for v in x]
  return x


def dumps(record: dict, **kwargs) -> str:
  """One strict-JSON line (no newline)."""
  return json.dumps(_encode(record), allow_nan=False, **kwargs)


def loads(line: str) -> dict:
  """A record written by :func:`dumps` (or by plain ``json.dumps``)."""
  return _decode(json.loads(line))


def read(path: str) -> list[dict]:
  """Every record of a JSON-lines file."""
  with open(path) as f:
    return [loads(line) for line in f if line.strip()]
