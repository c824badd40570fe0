"""Does clipping the trust ratio help LAMB hold a large batch? A byte-level
transformer LM on the offline standard-library corpus, tuned at every batch.

  python -m study.reproduce --experiment lm_batch [--workdir runs/lm_batch]
  python -m study.reproduce --experiment lm_batch --tiny   # a minute

The first round's design (``docs/lm/PLAN.md`` fixes it, and the primary
comparison, before any run) has three stages; each finished run is appended
to a ledger (``LEDGER``, committed), so the study resumes from committed
partial results on any machine:

1. ``noise``: one LAMB run with the gradient noise scale logged
   (``examples.lib.noise_scale``). The median ``B_simple`` over its middle
   half places the batches at powers of two near ``BATCH_FACTORS`` times it.
2. ``tune``: for every (optimizer, batch), the learning rate on a factor-2
   grid centred on the square-root rule's guess from 0.2's batch-16 picks
   (``LR_AT_16``), extended while the best sits at an edge; on its own seed
   (``TUNE_SEED``), scored on the whole validation split.
3. ``final``: ``FINAL_SEEDS`` fresh seeds per (optimizer, batch) at the tuned
   rate, paired across optimizers (a seed fixes the init and the data order);
   scored on the whole test split, plus the training bytes each run needs
   to reach a target validation loss.

Every run has the same training bytes (``TOKENS``), Adam's epsilon
(``EPS``), weight decay, warm-up fraction and cosine decay. The report
(``study.lm_report``) gives paired 95 % intervals; only the primary
comparison is a test, the rest is descriptive. The second round
(``study.lm_round2``) reuses this module's runs, ledger and tuning rule.
"""

import dataclasses
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from typing import NamedTuple

from examples.configs import lm
from examples.lib import config as config_lib
from examples.lib import jsonl, stats
from examples.lib.config import Config

TOKENS = 3 * 2 ** 19  # 1,572,864 training bytes per run (twice 0.2's)
MICRO_BATCH = 64  # larger batches accumulate micro-batches of this size
EPS = 1e-6  # Adam's epsilon, for every optimizer
_LAMB = {'optimizer': 'lamb', 'max_trust_ratio': None}
_LAMBC = {'optimizer': 'lambc', 'max_trust_ratio': 1.0}
# Every optimizer either round runs: its name (a table column, part of a
# run's ledger key) -> config overrides. The first three are round 1's.
ARMS = {
    'AdamW': {'optimizer': 'adamw'},
    'LAMB': _LAMB,
    'LAMBC max 1': _LAMBC,
    # Round 2 (PLAN.md, amendment 2): BERT's convention, biases and
    # LayerNorm parameters neither adapted nor decayed ...
    'LAMB -bias/norm': {**_LAMB, 'exclude_bias_and_norm': True},
    'LAMBC max 1 -bias/norm': {**_LAMBC, 'exclude_bias_and_norm': True},
    # ... and every layer adapted, the LayerNorm scales without a bound.
    'LAMBC max 1, norm scales unbounded': {**_LAMBC,
                                           'unbounded_params': 'scale'},
}
OPTIMIZERS = ('AdamW', 'LAMB', 'LAMBC max 1')  # round 1's
LR_AT_16 = {'AdamW': 3e-3, 'LAMB': 3e-2}  # 0.2's picks; LAMB's for LAMBC
PRIMARY = ('LAMBC max 1', 'LAMB')  # at the largest batch: PRIMARY[0] - [1]
BATCH_FACTORS = (0.3, 1.0, 5.0)  # batches, in units of the noise scale
NOISE_RUN = {'optimizer': 'LAMB', 'batch': 32, 'micro_batch': 4}


class NoiseWindow(NamedTuple):
  """Steps ``lo * steps <= s <= hi * steps`` of a noise run (``lo <`` when
  ``open_low``), as fractions of its length."""

  lo: float
  hi: float
  open_low: bool = False


# The amended rule: the middle half of the run, both ends included.
NOISE_WINDOW = NoiseWindow(0.25, 0.75)
# The plan's first rule, as round 1's code applied it before amendment 1:
# the steps after the first half (round 1's run: B* = 50.0, 16/64/256).
ORIGINAL_NOISE_WINDOW = NoiseWindow(0.5, 1.0, open_low=True)
TUNE_SEED = 100
FINAL_SEEDS = (0, 1, 2, 3, 4)
MAX_EXTENSIONS = 3  # grid points added beyond either edge, at most
# The LAMBC paper's convention (as the digits demo): every layer is adapted
# and decayed, so the clip acts on LayerNorm scales and biases too.
BASE = {'exclude_bias_and_norm': False, 'warmup_fraction': 0.1,
        'weight_decay': 0.01, 'checkpoint_every_steps': 0, 'adam_eps': EPS,
        'eval_split': 'validation', 'eval_examples': 1024,
        'final_eval_splits': 'validation,test', 'progress': False}
LEDGER = os.path.join('docs', 'lm', 'runs.jsonl')
PACKAGES = ('jax', 'jaxlib', 'optax', 'flax', 'numpy', 'grain')


@dataclasses.dataclass(frozen=True)
class Plan:
  """The study's sizes; ``tiny()`` is the end-to-end test's."""

  tokens: int = TOKENS
  micro_batch: int = MICRO_BATCH
  optimizers: tuple[str, ...] = OPTIMIZERS
  final_seeds: tuple[int, ...] = FINAL_SEEDS
  max_extensions: int = MAX_EXTENSIONS
  grid_radius: int = 1  # grid points each side of the guess before extending
  noise_batch: int = NOISE_RUN['batch']
  noise_micro_batch: int = NOISE_RUN['micro_batch']
  batches: tuple[int, ...] | None = None  # None: from the noise scale
  overrides: tuple[tuple[str, object], ...] = ()

  @classmethod
  def tiny(cls) -> 'Plan':
    return cls(tokens=4 * 8 * 16, micro_batch=4,
               optimizers=('LAMB', 'LAMBC max 1'), final_seeds=(0, 1),
               max_extensions=0, grid_radius=0, noise_batch=8,
               noise_micro_batch=4, batches=(8,), overrides=TINY)


TINY = (('seq_len', 16), ('eval_examples', 32), ('final_eval_examples', 64))


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the study.

  ``setting`` holds config overrides beyond the arm's (round 2's warm-up,
  Adam beta2 and gradient clipping grid), ``tokens`` multiplies the plan's
  training bytes. Both appear in the key only when not the default, so round
  1's keys are unchanged.
  """

  stage: str  # noise | tune | final | rate
  optimizer: str  # an ARMS name
  batch: int
  lr: float
  seed: int
  setting: tuple[tuple[str, float], ...] = ()
  tokens: int = 1

  @property
  def key(self) -> str:
    key = (f'{self.stage}/{self.optimizer}/batch {self.batch}/'
           f'lr {self.lr:.6g}/seed {self.seed}')
    if self.setting:
      key += '/' + setting_label(self.setting)
    if self.tokens != 1:
      key += f'/tokens x{self.tokens}'
    return key

  @property
  def dirname(self) -> str:
    return ''.join(c if c.isalnum() or c in '._-/' else '_' for c in self.key)


def setting_label(setting: tuple[tuple[str, float], ...]) -> str:
  """``'adam_b2 0.95, clip_grad_norm 1'``; ``'default'`` for none."""
  return ', '.join(f'{k} {v:g}' for k, v in setting) or 'default'


def steps(batch: int, tokens: int, seq_len: int) -> int:
  return max(1, tokens // (batch * seq_len))


def guess_lr(optimizer: str, batch: int) -> float:
  """The square-root rule from 0.2's batch-16 picks (every LAMB arm starts
  from LAMB's)."""
  rate = LR_AT_16['AdamW' if optimizer == 'AdamW' else 'LAMB']
  return rate * math.sqrt(batch / 16)


def run_config(base: Config, plan: Plan, run: Run) -> Config:
  total = steps(run.batch, plan.tokens * run.tokens, base.seq_len)
  micro = plan.noise_micro_batch if run.stage == 'noise' else \
      plan.micro_batch
  over = {**ARMS[run.optimizer], **dict(run.setting),
          'global_batch_size': run.batch,
          'accum_steps': max(1, run.batch // micro), 'num_train_steps': total,
          'eval_every_steps': max(1, total // 16),
          'log_every_steps': max(1, total // 32), 'learning_rate': run.lr,
          'seed': run.seed, 'noise_scale': run.stage == 'noise'}
  return base.replace(**over)


class Ledger:
  """Finished runs, one strict-JSON line each, keyed by ``Run.key``."""

  def __init__(self, path: str):
    self.path = path
    self.records: dict[str, dict] = {}
    if os.path.exists(path):
      for record in jsonl.read(path):
        self.records[record['key']] = record

  def add(self, record: dict) -> None:
    self.records[record['key']] = record
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    with open(self.path, 'a') as f:
      f.write(jsonl.dumps(record, sort_keys=True) + '\n')


def source_commit() -> str | None:
  """The git commit the study's code was run from (None outside a checkout;
  ``+`` marks uncommitted changes).

  Raises:
    RuntimeError: if ``optax_lambc`` was imported from elsewhere (e.g. an
      editable install of another checkout): the record would name the
      wrong code. Run with ``PYTHONPATH`` set to this checkout.
  """
  import optax_lambc  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  library = os.path.dirname(os.path.dirname(os.path.abspath(
      optax_lambc.__file__)))
  if library != root:
    raise RuntimeError(f'optax_lambc is imported from {library}, not from '
                       f'this checkout {root}; set PYTHONPATH={root}')
  try:
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root,
                          capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--',
                            'optax_lambc', 'examples', 'study'], cwd=root,
                           capture_output=True, text=True,
                           timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ('+' if dirty else '')


def versions() -> dict[str, str]:
  """Python's and the numerical packages' versions."""
  out = {'python': platform.python_version()}
  for p in PACKAGES:
    try:
      out[p] = metadata.version(p)
    except metadata.PackageNotFoundError:
      pass
  return out


def provenance() -> dict:
  """What every ledger record says about where and when it ran."""
  return {'commit': source_commit(), 'cpu': stats.cpu_model(),
          'cores': os.cpu_count(), 'host': platform.node(),
          'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
          'versions': versions()}


def _telemetry(rows: list[dict]) -> list[dict]:
  keep = ('trust_ratio/raw/', 'trust_ratio/applied/', 'trust_ratio/upper/')
  return [{k: v for k, v in r.items() if k == 'step' or k.startswith(keep)}
          for r in rows if r['split'] == 'train']


def ratio_summary(rows: list[dict]) -> dict[str, list[float]]:
  """Per layer, over every step of a run: ``[largest raw trust ratio,
  steps whose raw ratio exceeded 1]`` (from the metrics' per-interval
  ``max_raw`` and ``steps_above_one``)."""
  out: dict[str, list[float]] = {}
  for r in rows:
    if r['split'] != 'train':
      continue
    for k, v in r.items():
      if k.startswith('trust_ratio/max_raw/'):
        layer = k.removeprefix('trust_ratio/max_raw/')
        high, above = out.get(layer, [-math.inf, 0])
        out[layer] = [max(high, v) if math.isfinite(v) else high,
                      above + r[f'trust_ratio/steps_above_one/{layer}']]
  return out


def execute(base: Config, plan: Plan, run: Run, workdir: str,
            telemetry: bool) -> dict:
  """Trains one run; its ledger record (a divergence is a result too).
  ``telemetry`` keeps the logged per-layer ratios (raw, applied, upper)."""
  from examples.lib import plots  # pylint: disable=g-import-not-at-top
  from examples.lib.metrics import NonFiniteError  # pylint: disable=g-import-not-at-top
  from examples.lib.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = run_config(base, plan, run)
  rundir = os.path.join(workdir, run.dirname)
  if os.path.exists(os.path.join(rundir, 'metrics.jsonl')):
    os.remove(os.path.join(rundir, 'metrics.jsonl'))  # a killed attempt
  record = {'key': run.key, **dataclasses.asdict(run),
            'setting': dict(run.setting), 'steps': config.num_train_steps,
            **provenance()}
  t0 = time.time()
  try:
    out = train_and_evaluate(config, rundir)
    record.update(diverged=False, data=out.get('data'), **{
        f'{split}_bpb': m['bits_per_byte'] for split, m in
        out['final'].items()})
  except NonFiniteError as e:
    record.update(diverged=True, error=str(e), validation_bpb=math.inf,
                  test_bpb=math.inf)
  record['wall_s'] = round(time.time() - t0, 1)
  rows = plots.read_metrics(rundir)
  record['curve'] = [[r['step'], r['bits_per_byte']] for r in rows
                     if r['split'] == 'eval']
  if run.stage == 'noise':
    record['noise'] = [[r['step'], r['noise_scale']] for r in rows
                       if r['split'] == 'train' and 'noise_scale' in r]
  summary = ratio_summary(rows)
  if summary:
    record['ratio_summary'] = summary
  if telemetry:
    record['telemetry'] = _telemetry(rows)
  return record


def noise_scale_summary(record: dict,
                        window: NoiseWindow = NOISE_WINDOW) -> float:
  """Median ``B_simple`` over a window of the noise run, in sequences.

  The default is the amended rule's middle half (steps 25 % to 75 %): past
  the warm-up, and before the cosine's last decay, where the gradient
  shrinks towards the noise and ``B_simple`` grows without bound.
  ``ORIGINAL_NOISE_WINDOW`` is the plan's first rule (the second half).
  """
  lo, hi = window.lo * record['steps'], window.hi * record['steps']
  values = [b for s, b in record['noise']
            if (lo < s if window.open_low else lo <= s) and s <= hi and
            math.isfinite(b) and b > 0]
  return statistics.median(values) if values else math.nan


def choose_batches(noise: float) -> tuple[int, ...]:
  """Powers of two nearest ``BATCH_FACTORS * noise`` (in log2), increasing:
  each at least twice the one before."""
  out = []
  for f in BATCH_FACTORS:
    b = 2 ** max(0, round(math.log2(max(f * noise, 1.0))))
    out.append(max(b, out[-1] * 2 if out else 1))
  return tuple(out)


def best(records: list[dict]) -> dict:
  """The record with the lowest validation bits/byte (a divergence: +inf;
  the first wins a tie)."""
  return min(records, key=lambda r: r['validation_bpb'] if math.isfinite(
      r['validation_bpb']) else math.inf)


def tune(do: Callable[[Run], dict], optimizer: str, batch: int,
         radius: int = 1, max_extensions: int = MAX_EXTENSIONS
         ) -> tuple[float, list[dict]]:
  """The factor-2 grid of ``2 * radius + 1`` rates around the guess,
  extended by one rate past an edge that wins, at most ``max_extensions``
  times each side; returns the best rate and the grid's records."""
  guess = guess_lr(optimizer, batch)
  lo, hi = -radius, radius
  while True:
    records = [do(Run('tune', optimizer, batch, guess * 2.0 ** j, TUNE_SEED))
               for j in range(lo, hi + 1)]
    top = records.index(best(records))
    if radius and top == 0 and lo > -radius - max_extensions:
      lo -= 1
    elif radius and top == len(records) - 1 and \
        hi < radius + max_extensions:
      hi += 1
    else:
      return records[top]['lr'], records


def make_do(base: Config, plan: Plan, ledger: Ledger, workdir: str,
            telemetry: Callable[[Run], bool]) -> Callable[[Run], dict]:
  """``do(run)``: the ledger's record of a run, training it first if the
  ledger has none."""

  def do(r: Run) -> dict:
    if r.key not in ledger.records:
      print(f'[{time.strftime("%H:%M:%S")}] {r.key}', flush=True)
      ledger.add(execute(base, plan, r, os.path.join(workdir, 'runs'),
                         telemetry(r)))
    return ledger.records[r.key]

  return do


def base_config(plan: Plan, overrides: list[str]) -> Config:
  base = lm().replace(**{**BASE, **dict(plan.overrides)})
  return config_lib.apply_overrides(base, overrides)


def run(workdir: str, overrides: list[str], tiny: bool = False,
        ledger_path: str | None = None,
        seeds: list[int] | None = None) -> list[str]:
  """Runs the stages (skipping runs in the ledger); writes the report."""
  from study import lm_report  # pylint: disable=g-import-not-at-top
  plan = Plan.tiny() if tiny else Plan()
  if seeds:
    plan = dataclasses.replace(plan, final_seeds=tuple(seeds))
  base = base_config(plan, overrides)
  if ledger_path is None:
    ledger_path = (os.path.join(workdir, 'runs.jsonl') if tiny else LEDGER)
  ledger = Ledger(ledger_path)
  do = make_do(base, plan, ledger, workdir, lambda r: (
      r.stage == 'final' and r.seed == plan.final_seeds[0] and
      r.optimizer != 'AdamW'))
  noise_run = do(Run('noise', 'LAMB', plan.noise_batch,
                     guess_lr('LAMB', plan.noise_batch), TUNE_SEED))
  noise = noise_scale_summary(noise_run)
  batches = plan.batches or choose_batches(noise)
  tuned, tuning = {}, []
  for batch in batches:
    for opt in plan.optimizers:
      tuned[opt, batch], records = tune(do, opt, batch, plan.grid_radius,
                                        plan.max_extensions)
      tuning += records
  finals = [do(Run('final', opt, batch, tuned[opt, batch], seed))
            for batch in batches for opt in plan.optimizers
            for seed in plan.final_seeds]
  return lm_report.write(
      workdir if tiny else os.path.join('docs', 'lm'),
      lm_report.Study(base=base, plan=plan, noise_run=noise_run, noise=noise,
                      batches=batches, tuned=tuned, tuning=tuning,
                      finals=finals, tiny=tiny, ledger=ledger_path))
