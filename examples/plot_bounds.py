"""Raw vs applied trust ratios under each bound policy, on a real run.

  python -m examples.plot_bounds [--out docs/bounds.png] [--epochs 20]

Trains the offline digits CNN (batch 1024) once per policy -- fixed bound 1,
``dynamic_bounds(1, gamma=0.05)`` and ``running_stat_bounds(2σ)`` -- logging
every step, and plots for one layer the raw ratio, the applied ratio and the
bounds in force. Used for the README's "Choosing bounds" figure.
"""

import argparse
import os
import tempfile

from examples.configs import digits
from examples.lib import plots
from examples.lib.train import train_and_evaluate

POLICIES = {
    'fixed max 1': dict(bound_policy='fixed', max_trust_ratio=1.0),
    'dynamic_bounds(1, γ=0.05)': dict(bound_policy='dynamic',
                                      max_trust_ratio=1.0, policy_gamma=0.05),
    'running_stat_bounds(2σ)': dict(bound_policy='running',
                                    max_trust_ratio=None, policy_n_std=2.0,
                                    policy_decay=0.9, policy_warmup_steps=5),
}


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='docs/bounds.png')
  parser.add_argument('--epochs', type=float, default=20)
  parser.add_argument('--layer', default='conv2/bias')
  args = parser.parse_args(argv)
  plt = plots._plt()  # pylint: disable=protected-access
  fig, axes = plt.subplots(1, len(POLICIES), figsize=(13, 3.8), sharey=True)
  for ax, (name, overrides) in zip(axes, POLICIES.items(), strict=True):
    with tempfile.TemporaryDirectory() as workdir:
      config = digits().replace(global_batch_size=1024, num_epochs=args.epochs,
                                log_every_steps=1, progress=False, **overrides)
      train_and_evaluate(config, workdir)
      records = plots.read_metrics(workdir)
    train = [r for r in records if r['split'] == 'train']
    steps = [r['step'] for r in train]
    for field, style in (('raw', ':'), ('applied', '-'), ('lower', '--'),
                         ('upper', '--')):
      values = [r[f'trust_ratio/{field}/{args.layer}'] for r in train]
      ax.plot(steps, values, style, label=field)
    ax.set_yscale('log')
    ax.set_title(name, fontsize=10)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(f'trust ratio of {args.layer}')
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  fig.savefig(args.out, dpi=110)
  print(args.out)
  return args.out


if __name__ == '__main__':
  main()
