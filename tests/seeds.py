"""Seeds that are the same in every process (imports no JAX)."""

import zlib


def stable_seed(*parts) -> int:
  """A seed in [0, 1000) derived from ``parts``, the same in every process.

  Python's ``hash()`` of ``None`` (and of objects) changes per process, so it
  must never seed a test.
  """
  return zlib.crc32(repr(parts).encode()) % 1000
