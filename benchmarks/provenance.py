"""Where a benchmark ran: the host's CPU model and core count."""

import contextlib
import os
import platform


def machine() -> str:
  """``'<CPU model>, <n> cores'`` (the model from ``/proc/cpuinfo``)."""
  cpu = platform.processor() or platform.machine()
  with contextlib.suppress(OSError, StopIteration):
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f
                 if line.startswith('model name'))
  return f'{cpu}, {os.cpu_count()} cores'
