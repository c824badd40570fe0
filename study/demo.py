"""The offline demo: LAMB vs LAMBC on real handwritten digits.

  python -m study.demo [--fast] [--workdir runs/demo] [--seeds 0,1,2]

scikit-learn's digits (1,797 8x8 images, a fixed 1,347/450 split) ship with
the package, so this runs anywhere, offline. A small CNN is trained with
batch sizes that are large relative to the data (256, 512 and 1024 of 1,347
images) for a fixed number of epochs, with LAMBC at upper bounds 1, 3 and 10
and with LAMB (no bound), for several seeds. It prints a table of test
accuracy (mean ± std) and each bound's difference from LAMB, paired by seed
with a 95 % interval, and writes results.md, accuracy curves per batch size
and the raw vs applied trust ratios per layer of one LAMBC run.
"""

import argparse
import os
import time

from examples.configs import digits
from examples.lib import plots, stats
from study import grid as grid_lib

BOUNDS = (1.0, 3.0, 10.0, None)


def settings(batch_sizes, bounds) -> list[grid_lib.Setting]:
  out = []
  for bs in batch_sizes:
    for bound in bounds:
      col = 'LAMB (no bound)' if bound is None else f'LAMBC max {bound:g}'
      out.append(grid_lib.Setting(
          f'batch {bs}', col,
          {'global_batch_size': bs, 'max_trust_ratio': bound,
           'optimizer': 'lamb' if bound is None else 'lambc'}))
  return out


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default='runs/demo')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--epochs', type=float, default=40)
  parser.add_argument('--fast', action='store_true',
                      help='seconds: one batch size, two settings, one seed')
  args = parser.parse_args(argv)
  batch_sizes, bounds, seeds = (256, 512, 1024), BOUNDS, [
      int(s) for s in args.seeds.split(',')]
  epochs = args.epochs
  if args.fast:
    batch_sizes, bounds, seeds, epochs = (512,), (1.0, None), [0], 2
  base = digits().replace(num_epochs=epochs, log_every_steps=2)
  grid = settings(batch_sizes, bounds)
  results = grid_lib.run_grid(base, grid, seeds, args.workdir)
  preamble = (f'scikit-learn digits, small CNN, {epochs:g} epochs, lr '
              f'{base.learning_rate:g} (warm-up 1 epoch, cosine), weight decay '
              f'{base.weight_decay:g}, seeds {seeds}. Command: '
              f'`python -m study.demo{" --fast" if args.fast else ""}`; '
              f'{stats.machine()}, '
              f'{time.strftime("%Y-%m-%d", time.gmtime())}.')
  paths = grid_lib.write_report(results, grid, args.workdir,
                                   'LAMB vs LAMBC on digits', preamble,
                                   baseline='LAMB (no bound)')
  # Raw vs applied trust ratios of one LAMBC run at the largest batch.
  lambc_run = next(r for r in results if r['row'] == f'batch {batch_sizes[-1]}'
                   and r['col'].startswith('LAMBC max 1') and r['seed'] ==
                   seeds[0])
  paths.append(plots.plot_raw_vs_applied(
      plots.read_metrics(lambc_run['workdir']),
      os.path.join(args.workdir, 'trust_ratios.png'),
      title=f"LAMBC max 1, {lambc_run['row']}, seed {seeds[0]}"))
  with open(paths[0]) as f:
    print(f.read())
  print('\n'.join(['wrote:'] + paths))
  return paths[0]


if __name__ == '__main__':
  main()
