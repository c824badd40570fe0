"""Byte-level text for the language-model example.

Two random-access sources of ``{'tokens': uint8[seq_len + 1], 'weights':
float32[seq_len]}`` (inputs are ``tokens[:-1]``, targets ``tokens[1:]``,
``weights`` mask padding out of the loss):

* :class:`StdlibCorpus` (offline, real, on every machine): the ``*.py`` source
  files of the running Python's standard library (``test/`` and
  ``site-packages`` excluded), split into train and validation by a stable
  hash of each file's path, joined with a 0 byte between files (byte 0 never
  occurs in source, so it marks file boundaries) and cut into consecutive
  windows: every sequence is full (packed), and sequence ``i`` is computed
  from ``i`` alone, so the grain pipeline shuffles and batches it like any
  random-access source and a resumed run sees exactly the batches it would
  have seen. The corpus differs between Python versions, so every result
  records its :meth:`StdlibCorpus.fingerprint`.
* :class:`TextSource`: any tfds text dataset (e.g. ``lm1b``) read through
  ``tfds.data_source``, one example per row: ``0 + utf-8 bytes + 0``,
  truncated to ``seq_len + 1`` and zero-padded with weight 0. (Packing rows
  across examples needs the lengths of all earlier rows; lm1b's sentences
  average about 130 bytes, so at ``seq_len`` 128 little is padded.)
"""

import hashlib
import os
import platform
import sysconfig
import zlib
from collections.abc import Sequence

import numpy as np

SEPARATOR = 0  # byte between files / around a text example


def stdlib_files(root: str | None = None) -> list[str]:
  """Sorted relative paths of the standard library's ``*.py`` files."""
  root = root or sysconfig.get_paths()['stdlib']
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root)
    parts = [] if rel_dir == '.' else rel_dir.split(os.sep)
    if {'test', 'site-packages'} & set(parts):  # test/ at any depth
      dirnames[:] = []
      continue
    dirnames[:] = [d for d in dirnames if d != '__pycache__']
    out += [os.path.join(*parts, f) for f in filenames if f.endswith('.py')]
  return sorted(out)


SPLITS = ('train', 'validation', 'test')


def split_of(path: str, percent: int = 5) -> str:
  """A stable split of a file: the crc32 of its relative path (not Python's
  per-process ``hash()``) picks ``percent`` % validation, ``percent`` % test,
  the rest train."""
  bucket = zlib.crc32(path.replace(os.sep, '/').encode()) % 100
  return ('validation' if bucket < percent else
          'test' if bucket < 2 * percent else 'train')


class StdlibCorpus(Sequence):
  """Packed byte windows of one split of the standard library's source.

  Args:
    split: ``'train'``, ``'validation'`` or ``'test'``.
    seq_len: bytes per sequence (each example holds ``seq_len + 1``).
    percent: share of files (by path hash) in validation, and in test.
    root: the library to read (default: the running Python's).
  """

  def __init__(self, split: str, seq_len: int, percent: int = 5,
               root: str | None = None):
    if split not in SPLITS:
      raise ValueError(f'the stdlib corpus has splits {", ".join(SPLITS)}; '
                       f'got {split!r}')
    self.root = root or sysconfig.get_paths()['stdlib']
    self.split, self.seq_len = split, seq_len
    self.files = [f for f in stdlib_files(self.root)
                  if split_of(f, percent) == split]
    parts = []
    for f in self.files:
      with open(os.path.join(self.root, f), 'rb') as fh:
        parts += [fh.read(), bytes([SEPARATOR])]
    self.data = np.frombuffer(b''.join(parts), np.uint8)
    if len(self.data) < seq_len + 1:
      raise ValueError(f'the {split} split has {len(self.data)} bytes, less '
                       f'than one sequence of {seq_len + 1}')

  def __len__(self) -> int:
    return (len(self.data) - 1) // self.seq_len

  def __getitem__(self, i: int) -> dict:
    if not -len(self) <= i < len(self):
      raise IndexError(i)
    start = (i % len(self)) * self.seq_len
    return {'tokens': self.data[start:start + self.seq_len + 1],
            'weights': np.ones(self.seq_len, np.float32)}

  def fingerprint(self) -> dict:
    """What the corpus is: Python version, files, bytes and a content hash."""
    return {'corpus': 'python-stdlib', 'python': platform.python_version(),
            'split': self.split, 'files': len(self.files),
            'bytes': int(len(self.data) - len(self.files)),
            'sha256': hashlib.sha256(self.data.tobytes()).hexdigest()[:16]}


class TextSource(Sequence):
  """One byte-level sequence per row of a random-access text source.

  Args:
    source: e.g. ``tfds.data_source('lm1b', split=...)``; rows are dicts.
    seq_len: bytes per sequence.
    key: the text feature of a row.
  """

  def __init__(self, source: Sequence[dict], seq_len: int, key: str = 'text'):
    self.source, self.seq_len, self.key = source, seq_len, key

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    text = self.source[i][self.key]
    if isinstance(text, str):
      text = text.encode('utf-8')
    row = np.frombuffer(bytes([SEPARATOR]) + bytes(text) + bytes([SEPARATOR]),
                        np.uint8)[:self.seq_len + 1]
    tokens = np.zeros(self.seq_len + 1, np.uint8)
    tokens[:len(row)] = row
    weights = (np.arange(self.seq_len) < len(row) - 1).astype(np.float32)
    return {'tokens': tokens, 'weights': weights}

  def fingerprint(self) -> dict:
    return {'corpus': 'tfds', 'examples': len(self)}
