"""``python -m examples.reproduce``: the study's old command, kept as an alias.

The paper's experiments and the LM study live in :mod:`study.reproduce`.
"""

from study.reproduce import main

if __name__ == '__main__':
  main()
