"""``python -m examples.demo``: the README's demo command, kept as an alias.

The demo lives with the studies, in :mod:`study.demo`.
"""

from study.demo import main

if __name__ == '__main__':
  main()
