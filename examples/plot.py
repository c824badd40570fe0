"""Plot a run: ``python -m examples.plot --workdir runs/c10``.

Writes accuracy.png and (for trust-ratio optimizers) trust_ratio_raw.png and
trust_ratio_applied.png, layer x step heat-maps, into the workdir.
"""

import argparse

from examples.lib.plots import plot_run


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  args = parser.parse_args(argv)
  for path in plot_run(args.workdir):
    print(path)


if __name__ == '__main__':
  main()
