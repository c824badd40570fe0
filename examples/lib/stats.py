"""Small statistics and provenance helpers for the examples' reports."""

import math
import os
import platform
import statistics

from scipy import stats as scipy_stats


def t_interval(values: list[float], confidence: float = 0.95
               ) -> tuple[float, float, int]:
  """``(mean, half-width of the Student-t interval, n)`` of the finite
  values; the half-width is NaN for fewer than 2 (and all NaN for none)."""
  ok = [v for v in values if math.isfinite(v)]
  if not ok:
    return math.nan, math.nan, 0
  if len(ok) < 2:
    return ok[0], math.nan, 1
  half = scipy_stats.t.ppf((1 + confidence) / 2, len(ok) - 1) * \
      statistics.stdev(ok) / math.sqrt(len(ok))
  return statistics.mean(ok), half, len(ok)


def differences(a: dict, b: dict) -> list[float]:
  """``a[k] - b[k]`` over the keys (seeds) both have, in key order."""
  return [a[k] - b[k] for k in sorted(a.keys() & b.keys())]


def paired_interval(a: dict, b: dict, confidence: float = 0.95
                    ) -> tuple[float, float, int]:
  """The t interval of ``a[k] - b[k]`` over the keys (seeds) both have."""
  return t_interval(differences(a, b), confidence)


def _standard_error(values: list[float]) -> tuple[float, float, int]:
  n = len(values)
  return statistics.mean(values), statistics.stdev(values) / math.sqrt(n), n


def difference_p(values: list[float]) -> float:
  """Two-sided p-value of the one-sample t test that the mean is 0 (1 for
  all-zero differences, 0 for identical non-zero ones)."""
  mean, se, n = _standard_error(values)
  if se == 0:
    return 1.0 if mean == 0 else 0.0
  return float(2 * scipy_stats.t.sf(abs(mean) / se, n - 1))


def equivalence_p(values: list[float], margin: float) -> float:
  """The TOST p-value that the mean lies inside ``(-margin, margin)``: the
  larger of the two one-sided t tests' p-values (Schuirmann 1987)."""
  mean, se, n = _standard_error(values)
  if se == 0:
    return 0.0 if abs(mean) < margin else 1.0
  lower = scipy_stats.t.sf((mean + margin) / se, n - 1)
  upper = scipy_stats.t.cdf((mean - margin) / se, n - 1)
  return float(max(lower, upper))


def holm(p_values: list[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values, in the given order."""
  order = sorted(range(len(p_values)), key=lambda i: p_values[i])
  out, running = [0.0] * len(p_values), 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
    out[i] = running
  return out


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
