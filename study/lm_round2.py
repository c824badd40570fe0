"""The LM study's second round: when does the clip help?

  python -m study.reproduce --experiment lm_round2 [--workdir runs/lm_round2]
  python -m study.reproduce --experiment lm_round2 --tiny   # a few minutes

Pre-registered in ``docs/lm/PLAN.md`` (amendment 2) before any of its runs,
and run from one frozen commit that every record names. Same corpus, model,
sequence length, Adam epsilon, weight decay and tuning rule as round 1
(``study.lm``); every baseline a comparison uses is rerun here. Five parts,
run in this order, each appended to the ledger (``LEDGER``) run by run:

1. ``noise``: the gradient noise scale over ``NOISE_SEEDS`` (seed 100 is round
   1's run again), with an interval, under both window rules.
2. mechanism (confirmatory), at ``BATCH``: every ``MECHANISM`` arm tuned on
   round 1's grid rule, then ``FINAL_SEEDS``.
3. headroom (confirmatory), at ``SMALL_BATCH``: LAMB and LAMBC max 1 at each
   of ``HEADROOM_FACTORS`` times the square-root guess, every final seed.
4. a fair large batch (descriptive), at ``BATCH``: for each of ``FAIR``, the
   ``FAIR_GRID`` (warm-up x Adam beta2 x gradient clipping) at its tuned
   rate, the best setting at half and twice that rate, then the final seeds
   at the best (setting, rate).
5. longer training (confirmatory for the primary pair), at ``BATCH`` with
   ``LONG_TOKENS`` times the bytes: LAMB, LAMBC max 1 and the best part-2
   variant, each at half, once and twice its part-2 rate, then the final
   seeds.
"""

import dataclasses
import itertools
import math
import os
import statistics
from collections.abc import Callable

from study import lm
from study.lm import Run

LEDGER = os.path.join('docs', 'lm', 'round2', 'runs.jsonl')
REPORT_DIR = os.path.join('docs', 'lm', 'round2')
BATCH = 128
SMALL_BATCH = 8
NOISE_SEEDS = (100, 101, 102)
PRIMARY = ('LAMBC max 1', 'LAMB')
VARIANTS = ('LAMB -bias/norm', 'LAMBC max 1 -bias/norm',
            'LAMBC max 1, norm scales unbounded')
MECHANISM = PRIMARY[::-1] + VARIANTS
HEADROOM = ('LAMB', 'LAMBC max 1')
HEADROOM_FACTORS = (0.5, 1.0, 2.0)  # times guess_lr at SMALL_BATCH
FAIR = ('AdamW', 'LAMB', 'LAMBC max 1')
# Warm-up fraction x Adam beta2 x global-norm clipping, each setting the
# sorted (key, value) pairs that differ from round 1's; the first is round
# 1's own (no pairs: the key of a part-2 tuning run).
FAIR_GRID = tuple(
    tuple(sorted((k, v) for k, v, default in (
        ('warmup_fraction', w, 0.1), ('adam_b2', b2, 0.999),
        ('clip_grad_norm', c, 0.0)) if v != default))
    for w, b2, c in itertools.product((0.1, 0.25), (0.999, 0.95), (0.0, 1.0)))
LONG_TOKENS = 4
LONG_FACTORS = (0.5, 1.0, 2.0)
MARGIN = 0.03  # bits/byte: the equivalence margin of every predicted tie


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  """A confirmatory comparison: ``a - b`` in test bits/byte, paired by seed.

  ``prediction`` is ``'>'`` or ``'<'`` (a difference of that sign: a
  two-sided t test) or ``'='`` (equivalence within ``MARGIN``: TOST). The
  five p-values are Holm-adjusted together; a prediction holds when its
  adjusted p is below 0.05 and, for a difference, the sign matches.
  """

  name: str
  part: str  # mechanism | headroom | long
  a: str
  b: str
  prediction: str
  claim: str


HYPOTHESES = (
    Hypothesis('H1', 'mechanism', 'LAMBC max 1', 'LAMB', '>',
               'round 1 replicates: at batch 128, clipping every layer at 1 '
               'is worse than LAMB'),
    Hypothesis('H2', 'mechanism', 'LAMBC max 1 -bias/norm', 'LAMB -bias/norm',
               '=', 'with biases and LayerNorm parameters out of adaptation, '
               'the clip changes nothing that matters'),
    Hypothesis('H3', 'mechanism', 'LAMBC max 1, norm scales unbounded',
               'LAMB', '=', 'the clip acting on the LayerNorm scales is the '
               'whole of round 1\'s cost'),
    Hypothesis('H4', 'headroom', 'LAMBC max 1', 'LAMB', '<',
               'at batch 8 and twice the square-root guess (lr 0.0424) the '
               'clip trains where LAMB degrades'),
    Hypothesis('H5', 'long', 'LAMBC max 1', 'LAMB', '>',
               'with four times the training bytes, clipping every layer at '
               '1 is still worse than LAMB'),
)


@dataclasses.dataclass(frozen=True)
class Plan(lm.Plan):
  """Round 2's sizes; ``tiny()`` is the end-to-end test's."""

  batch: int = BATCH
  small_batch: int = SMALL_BATCH
  noise_seeds: tuple[int, ...] = NOISE_SEEDS
  mechanism: tuple[str, ...] = MECHANISM
  headroom: tuple[str, ...] = HEADROOM
  headroom_factors: tuple[float, ...] = HEADROOM_FACTORS
  fair: tuple[str, ...] = FAIR
  fair_grid: tuple[tuple[tuple[str, float], ...], ...] = FAIR_GRID
  long_tokens: int = LONG_TOKENS
  long_factors: tuple[float, ...] = LONG_FACTORS

  @classmethod
  def tiny(cls) -> 'Plan':
    return cls(tokens=4 * 8 * 16, micro_batch=4, final_seeds=(0, 1),
               max_extensions=0, grid_radius=0, noise_batch=8,
               noise_micro_batch=4, overrides=lm.TINY, batch=8,
               small_batch=4, noise_seeds=(100, 101),
               mechanism=('LAMB', 'LAMBC max 1', VARIANTS[2]),
               headroom_factors=(1.0, 2.0), fair=('AdamW', 'LAMB'),
               fair_grid=FAIR_GRID[:1] + FAIR_GRID[-1:], long_tokens=2,
               long_factors=(1.0,))


@dataclasses.dataclass
class Round2:
  """Every record the report reads, by part."""

  plan: Plan
  noise_runs: list[dict]
  tuned: dict[str, float]  # part 2's tuned rate per arm
  tuning: dict[str, list[dict]]
  finals: dict[str, list[dict]]  # part 2, per arm
  headroom: list[dict]
  fair_tuning: dict[str, list[dict]]
  fair_choice: dict[str, tuple[tuple[tuple[str, float], ...], float]]
  fair_finals: dict[str, list[dict]]
  long_arms: tuple[str, ...]
  long_tuning: dict[str, list[dict]]
  long_finals: dict[str, list[dict]]
  ledger: str = LEDGER
  tiny: bool = False


def mean_validation(records: list[dict]) -> float:
  values = [r['validation_bpb'] for r in records]
  return statistics.mean(values) if values else math.nan


def stages(plan: Plan, do: Callable[[Run], dict]) -> Round2:
  """Runs (or reads from the ledger, through ``do``) every run of the round,
  in the pre-registered order; returns them by part."""
  seeds, batch = plan.final_seeds, plan.batch
  noise_runs = [do(Run('noise', 'LAMB', plan.noise_batch,
                       lm.guess_lr('LAMB', plan.noise_batch), s))
                for s in plan.noise_seeds]

  def finals(arm, lr, setting=(), tokens=1):
    return [do(Run('final', arm, batch, lr, s, setting, tokens))
            for s in seeds]

  # Part 2: the mechanism.
  tuned, tuning, final = {}, {}, {}
  for arm in plan.mechanism:
    tuned[arm], tuning[arm] = lm.tune(do, arm, batch, plan.grid_radius,
                                      plan.max_extensions)
    final[arm] = finals(arm, tuned[arm])
  # Part 3: learning-rate headroom at the small batch.
  guess = lm.guess_lr('LAMB', plan.small_batch)
  headroom = [do(Run('rate', arm, plan.small_batch, guess * f, s))
              for arm in plan.headroom for f in plan.headroom_factors
              for s in seeds]
  # Part 4: a fair large batch.
  fair_tuning, fair_choice, fair_finals = {}, {}, {}
  for arm in plan.fair:
    if arm not in tuned:
      tuned[arm], tuning[arm] = lm.tune(do, arm, batch, plan.grid_radius,
                                        plan.max_extensions)
    grid = [do(Run('tune', arm, batch, tuned[arm], lm.TUNE_SEED, s))
            for s in plan.fair_grid]
    setting = plan.fair_grid[grid.index(lm.best(grid))]
    rates = [do(Run('tune', arm, batch, tuned[arm] * f, lm.TUNE_SEED,
                    setting)) for f in (0.5, 2.0)]
    top = lm.best([grid[plan.fair_grid.index(setting)]] + rates)
    fair_tuning[arm] = grid + rates
    fair_choice[arm] = (setting, top['lr'])
    fair_finals[arm] = finals(arm, top['lr'], setting)
  # Part 5: four times the bytes, for the primary pair and the best variant
  # (the lowest mean validation bits/byte over its part-2 final seeds).
  variants = [a for a in plan.mechanism if a not in PRIMARY]
  best_variant = min(variants, key=lambda a: mean_validation(final[a]))
  long_arms = PRIMARY[::-1] + (best_variant,)
  long_tuning, long_finals = {}, {}
  for arm in long_arms:
    long_tuning[arm] = [
        do(Run('tune', arm, batch, tuned[arm] * f, lm.TUNE_SEED,
               tokens=plan.long_tokens)) for f in plan.long_factors]
    lr = lm.best(long_tuning[arm])['lr']
    long_finals[arm] = finals(arm, lr, tokens=plan.long_tokens)
  return Round2(plan, noise_runs, tuned, tuning, final, headroom,
                fair_tuning, fair_choice, fair_finals, long_arms,
                long_tuning, long_finals)


def placeholder(run: Run) -> dict:
  """A run the ledger does not hold yet: ``missing``, NaN results, never
  trained (the report shows it as not run yet)."""
  return {'key': run.key, 'stage': run.stage, 'optimizer': run.optimizer,
          'batch': run.batch, 'lr': run.lr, 'seed': run.seed,
          'setting': dict(run.setting), 'tokens': run.tokens, 'steps': 0,
          'validation_bpb': math.nan, 'test_bpb': math.nan,
          'diverged': False, 'curve': [], 'noise': [], 'ratio_summary': {},
          'missing': True}


def from_ledger(ledger_path: str = LEDGER, plan: Plan | None = None
                ) -> Round2:
  """The round as far as its ledger goes, training nothing: each run not in
  the ledger is a ``placeholder``. The runs an unfinished part would choose
  next follow from placeholders (NaN counts as worst), so only its finished
  runs are results."""
  ledger = lm.Ledger(ledger_path)
  do = lambda r: ledger.records.get(r.key) or placeholder(r)
  return dataclasses.replace(stages(plan or Plan(), do), ledger=ledger_path)


def keeps_telemetry(plan: Plan) -> Callable[[Run], bool]:
  """The logged per-layer ratios are kept for the first seed's final runs
  of every trust-ratio arm (every run keeps its per-layer summary)."""
  return lambda r: (r.stage == 'final' and r.seed == plan.final_seeds[0]
                    and r.optimizer != 'AdamW' and not r.setting)


def run(workdir: str, overrides: list[str], tiny: bool = False,
        ledger_path: str | None = None,
        seeds: list[int] | None = None) -> list[str]:
  """Runs the round (skipping runs in the ledger); writes the report."""
  from study import lm_round2_report  # pylint: disable=g-import-not-at-top
  plan = Plan.tiny() if tiny else Plan()
  if seeds:
    plan = dataclasses.replace(plan, final_seeds=tuple(seeds))
  base = lm.base_config(plan, overrides)
  if ledger_path is None:
    ledger_path = os.path.join(workdir, 'runs.jsonl') if tiny else LEDGER
  ledger = lm.Ledger(ledger_path)
  do = lm.make_do(base, plan, ledger, workdir, keeps_telemetry(plan))
  result = dataclasses.replace(stages(plan, do), ledger=ledger_path,
                               tiny=tiny)
  return lm_round2_report.write(workdir if tiny else REPORT_DIR, base, result)
