"""Reproduce the LAMBC paper's experiments with the shared training library.

  python -m study.reproduce --experiment table1 --workdir results/table1 \
      --set data_dir=~/tensorflow_datasets
  python -m study.reproduce --experiment figure2 --seeds 0,1,2
  python -m study.reproduce --experiment table1 --mock   # seconds, fake data
  python -m study.reproduce --experiment lm_batch   # hours; resumable

Experiments (the paper: Fong, Chen & Chen 2020, Sec. 4):

* ``table1``: CIFAR-10, ResNet-18, lr 1e-2, 80 epochs, batch 1000/2000/3000,
  LAMBC (max ratio 1) vs LAMB (no clip). Paper: 87.71 / 87.30 / 86.29 vs
  85.68 / 86.61 / 85.41.
* ``figure2``: CIFAR-10, batch 1000, upper bounds 1, 3, 5, 10 and none (paper:
  1 best, 10 worst, all beat none).
* ``figure3``: ImageNet 64x64, batch 400, LAMBC vs LAMB.
* ``extras``: what the paper lacked: the adaptive bound policies
  (``dynamic_bounds``, ``running_stat_bounds``) and larger batches (4000,
  8000); run it with several seeds.
* ``lm_batch``: what the paper left for future work, on language modelling:
  LAMB against LAMBC max 1 (AdamW as reference) on a byte-level scanned
  transformer, at batches placed from the measured gradient noise scale, the
  learning rate tuned for every (optimizer, batch), 5 paired seeds, a fixed
  byte budget, offline data (the plan: ``docs/lm/PLAN.md``; the code:
  ``study.lm``).
* ``lm_round2``: the LM study's second, pre-registered round: when does the
  clip help? The mechanism by intervention (which layers the clip acts on),
  learning-rate headroom at a small batch, a fair large batch for AdamW,
  four times the training bytes, and the noise scale over three seeds
  (``docs/lm/PLAN.md``, amendment 2; the code: ``study.lm_round2``).

Each run resumes from its checkpoint; finished runs are skipped. The results
folder gets ``results.md`` (mean ± std over seeds) and accuracy plots.
"""

import argparse

from examples.configs import cifar10, imagenet64
from examples.lib import config as config_lib
from study import grid as grid_lib
from study.grid import Setting

PAPER = {
    'table1': 'Paper (Table 1): LAMBC 87.71 / 87.30 / 86.29, LAMB 85.68 / '
              '86.61 / 85.41 at batch 1000 / 2000 / 3000.',
    'figure2': 'Paper (Figure 2): bound 1 best, 10 worst, all beat no bound.',
    'figure3': 'Paper (Figure 3): LAMBC above LAMB on ImageNet 64x64.',
    'extras': 'Not in the paper.',
    'lm_batch': 'Not in the paper (its future work).',
    'lm_round2': 'Not in the paper (its future work).',
}


def _clip(bound):
  if bound is None:
    return 'LAMB (no bound)', {'optimizer': 'lamb', 'max_trust_ratio': None}
  return f'LAMBC max {bound:g}', {'optimizer': 'lambc',
                                  'max_trust_ratio': bound}


def experiment(name: str):
  """(base config, settings) of one experiment."""
  if name == 'table1':
    grid = []
    for bs in (1000, 2000, 3000):
      for bound in (1.0, None):
        col, ov = _clip(bound)
        grid.append(Setting(f'batch {bs}', col,
                            {**ov, 'global_batch_size': bs}))
    return cifar10(), grid
  if name == 'figure2':
    return cifar10(), [Setting('batch 1000', _clip(b)[0],
                               {**_clip(b)[1], 'global_batch_size': 1000})
                       for b in (1.0, 3.0, 5.0, 10.0, None)]
  if name == 'figure3':
    return imagenet64(), [Setting('batch 400', _clip(b)[0], _clip(b)[1])
                          for b in (1.0, None)]
  if name == 'extras':
    grid = []
    for bs in (1000, 4000, 8000):
      for col, ov in (_clip(1.0), _clip(None),
                      ('dynamic_bounds(1, 1e-3)',
                       {'bound_policy': 'dynamic', 'max_trust_ratio': 1.0}),
                      ('running_stat_bounds(3σ)',
                       {'bound_policy': 'running', 'max_trust_ratio': None})):
        grid.append(Setting(f'batch {bs}', col,
                            {**ov, 'global_batch_size': bs}))
    return cifar10(), grid
  raise ValueError(f'unknown experiment {name!r}; known: '
                   f'{", ".join(PAPER)}')


MOCK = {'mock_data': True, 'mock_num_examples': 32, 'width': 4,
        'num_train_steps': 2, 'global_batch_size': 16, 'log_every_steps': 1,
        'checkpoint_every_steps': 0}


def main(argv=None) -> list[str]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--experiment', required=True, choices=list(PAPER))
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--seeds', default=None,
                      help='comma-separated (default: 0; lm_batch: 0-4)')
  parser.add_argument('--set', dest='overrides', action='append', default=[],
                      metavar='KEY=VALUE', help='override a config field')
  parser.add_argument('--mock', action='store_true',
                      help='fake data, tiny model, 2 steps per run')
  parser.add_argument('--tiny', action='store_true',
                      help='lm_* in a minute or two: tiny batches and budget')
  parser.add_argument('--ledger', default=None,
                      help='lm_*: the ledger to resume from and append to '
                      '(default: the committed one under docs/lm)')
  args = parser.parse_args(argv)
  if args.experiment.startswith('lm_'):
    from study import lm, lm_round2  # pylint: disable=g-import-not-at-top
    seeds = [int(s) for s in args.seeds.split(',')] if args.seeds else None
    study = lm if args.experiment == 'lm_batch' else lm_round2
    paths = study.run(args.workdir or f'runs/{args.experiment}',
                      args.overrides, tiny=args.tiny, seeds=seeds,
                      ledger_path=args.ledger)
    with open(paths[0]) as f:
      print(f.read())
    return paths
  base, grid = experiment(args.experiment)
  base = config_lib.apply_overrides(base, args.overrides)
  if args.mock:
    base = base.replace(**MOCK)
    grid = [Setting(s.row, s.col, {**s.overrides, 'global_batch_size': 16})
            for s in grid]
  workdir = args.workdir or f'results/{args.experiment}'
  seeds = [int(s) for s in (args.seeds or '0').split(',')]
  results = grid_lib.run_grid(base, grid, seeds, workdir)
  paths = grid_lib.write_report(
      results, grid, workdir, f'{args.experiment}' + (' (mock data)' if
                                                      args.mock else ''),
      PAPER[args.experiment] + f' Seeds: {seeds}.')
  with open(paths[0]) as f:
    print(f.read())
  return paths


if __name__ == '__main__':
  main()
