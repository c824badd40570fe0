"""Small statistics and provenance helpers for the examples' reports."""

import math
import os
import platform
import statistics

from scipy import stats as scipy_stats


def t_interval(values: list[float]) -> tuple[float, float, int]:
  """``(mean, half-width of the 95 % Student-t interval, n)`` of the finite
  values; the half-width is NaN for fewer than 2 (and all NaN for none)."""
  ok = [v for v in values if math.isfinite(v)]
  if not ok:
    return math.nan, math.nan, 0
  if len(ok) < 2:
    return ok[0], math.nan, 1
  half = scipy_stats.t.ppf(0.975, len(ok) - 1) * statistics.stdev(ok) / \
      math.sqrt(len(ok))
  return statistics.mean(ok), half, len(ok)


def paired_interval(a: dict, b: dict) -> tuple[float, float, int]:
  """The 95 % t interval of ``a[k] - b[k]`` over the keys (seeds) both
  have."""
  return t_interval([a[k] - b[k] for k in sorted(a.keys() & b.keys())])


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo``), else the platform's."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> str:
  """``'<CPU model>, <n> cores'``, for a report's provenance line."""
  return f'{cpu_model()}, {os.cpu_count()} cores'
