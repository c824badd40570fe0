"""Simulated CPU devices for the scripts in this directory.

Set ``os.environ['XLA_FLAGS'] = devices.xla_flags(n)`` before JAX is
imported: XLA reads its flags once, when the first backend starts.
"""

# Simulated devices share 2 cores: under load a collective's threads can take
# longer than XLA:CPU's 40 s to meet (it then aborts the process), so the limit
# is the calling test's own subprocess timeout.
_TIMEOUT_S = 600


def xla_flags(count: int) -> str:
  """``XLA_FLAGS`` for ``count`` simulated CPU devices."""
  return (f'--xla_force_host_platform_device_count={count} '
          f'--xla_cpu_collective_call_terminate_timeout_seconds={_TIMEOUT_S}')
