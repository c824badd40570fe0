"""Simulated CPU devices for the scripts in this directory.

Set ``os.environ['XLA_FLAGS'] = devices.xla_flags(n)`` before JAX is
imported: XLA reads its flags once, when the first backend starts.
"""

# How long XLA:CPU lets a collective wait for all device threads before it
# aborts the process (its default: 40 s). Simulated devices share 2 cores,
# so under load they meet late; but twice some never arrived at all (a stall
# inside XLA:CPU, 9 minutes without progress), which tests/test_parallel.py
# retries once. The limit is generous for the first and short for the second.
_TIMEOUT_S = 120


def xla_flags(count: int) -> str:
  """``XLA_FLAGS`` for ``count`` simulated CPU devices."""
  return (f'--xla_force_host_platform_device_count={count} '
          f'--xla_cpu_collective_call_terminate_timeout_seconds={_TIMEOUT_S}')
