"""Does clipping the trust ratio help LAMB hold a large batch? A byte-level
transformer LM on the offline standard-library corpus, tuned at every batch.

  python -m examples.reproduce --experiment lm_batch [--workdir runs/lm_batch]
  python -m examples.reproduce --experiment lm_batch --tiny   # a minute

The design (``docs/lm/PLAN.md`` fixes it, and the primary comparison, before
any run) has three stages; each finished run is appended to a ledger
(``LEDGER``, committed), so the study resumes from committed partial results
on any machine:

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
(``report.write``) gives paired 95 % intervals; only the primary comparison
is a test, the rest is descriptive.
"""

import dataclasses
import json
import math
import os
import statistics
import subprocess
import time
from collections.abc import Callable

from examples.configs import lm
from examples.lib import config as config_lib
from examples.lib import stats
from examples.lib.config import Config

TOKENS = 3 * 2 ** 19  # 1,572,864 training bytes per run (twice 0.2's)
MICRO_BATCH = 64  # larger batches accumulate micro-batches of this size
EPS = 1e-6  # Adam's epsilon, for every optimizer
OPTIMIZERS = {  # column -> config overrides
    'AdamW': {'optimizer': 'adamw'},
    'LAMB': {'optimizer': 'lamb', 'max_trust_ratio': None},
    'LAMBC max 1': {'optimizer': 'lambc', 'max_trust_ratio': 1.0},
}
LR_AT_16 = {'AdamW': 3e-3, 'LAMB': 3e-2, 'LAMBC max 1': 3e-2}  # 0.2's picks
PRIMARY = ('LAMBC max 1', 'LAMB')  # at the largest batch: PRIMARY[0] - [1]
BATCH_FACTORS = (0.3, 1.0, 5.0)  # batches, in units of the noise scale
NOISE_RUN = {'optimizer': 'LAMB', 'batch': 32, 'micro_batch': 4}
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


@dataclasses.dataclass(frozen=True)
class Plan:
  """The study's sizes; ``tiny()`` is the end-to-end test's."""

  tokens: int = TOKENS
  micro_batch: int = MICRO_BATCH
  optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
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
               noise_micro_batch=4, batches=(8,),
               overrides=(('seq_len', 16), ('eval_examples', 32),
                          ('final_eval_examples', 64)))


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the study."""

  stage: str  # noise | tune | final
  optimizer: str
  batch: int
  lr: float
  seed: int

  @property
  def key(self) -> str:
    return (f'{self.stage}/{self.optimizer}/batch {self.batch}/'
            f'lr {self.lr:.6g}/seed {self.seed}')

  @property
  def dirname(self) -> str:
    return ''.join(c if c.isalnum() or c in '._-/' else '_' for c in self.key)


def steps(batch: int, tokens: int, seq_len: int) -> int:
  return max(1, tokens // (batch * seq_len))


def guess_lr(optimizer: str, batch: int) -> float:
  """The square-root rule from 0.2's batch-16 picks."""
  return LR_AT_16[optimizer] * math.sqrt(batch / 16)


def run_config(base: Config, plan: Plan, run: Run) -> Config:
  total = steps(run.batch, plan.tokens, base.seq_len)
  micro = plan.noise_micro_batch if run.stage == 'noise' else \
      plan.micro_batch
  over = {**OPTIMIZERS[run.optimizer], 'global_batch_size': run.batch,
          'accum_steps': max(1, run.batch // micro), 'num_train_steps': total,
          'eval_every_steps': max(1, total // 16),
          'log_every_steps': max(1, total // 32), 'learning_rate': run.lr,
          'seed': run.seed, 'noise_scale': run.stage == 'noise'}
  return base.replace(**over)


class Ledger:
  """Finished runs, one JSON line each, keyed by ``Run.key``."""

  def __init__(self, path: str):
    self.path = path
    self.records: dict[str, dict] = {}
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          if line.strip():
            record = json.loads(line)
            self.records[record['key']] = record

  def add(self, record: dict) -> None:
    self.records[record['key']] = record
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    with open(self.path, 'a') as f:
      f.write(json.dumps(record, sort_keys=True) + '\n')


def source_commit() -> str | None:
  """The git commit the study's code was run from (None outside a checkout;
  ``+`` marks uncommitted changes)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root,
                          capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--',
                            'optax_lambc', 'examples'], cwd=root,
                           capture_output=True, text=True,
                           timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ('+' if dirty else '')


def _telemetry(rows: list[dict]) -> list[dict]:
  keep = ('trust_ratio/raw/', 'trust_ratio/applied/', 'trust_ratio/upper/')
  return [{k: v for k, v in r.items() if k == 'step' or k.startswith(keep)}
          for r in rows if r['split'] == 'train']


def execute(base: Config, plan: Plan, run: Run, workdir: str) -> dict:
  """Trains one run; its ledger record (a divergence is a result too)."""
  from examples.lib import plots  # pylint: disable=g-import-not-at-top
  from examples.lib.metrics import NonFiniteError  # pylint: disable=g-import-not-at-top
  from examples.lib.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = run_config(base, plan, run)
  rundir = os.path.join(workdir, run.dirname)
  if os.path.exists(os.path.join(rundir, 'metrics.jsonl')):
    os.remove(os.path.join(rundir, 'metrics.jsonl'))  # a killed attempt
  record = {'key': run.key, **dataclasses.asdict(run),
            'steps': config.num_train_steps, 'cpu': stats.cpu_model(),
            'cores': os.cpu_count(), 'commit': source_commit()}
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
  if run.stage == 'final' and run.seed == plan.final_seeds[0] and \
      run.optimizer != 'AdamW':
    record['telemetry'] = _telemetry(rows)
  return record


def noise_scale_summary(record: dict) -> float:
  """Median ``B_simple`` over the middle half of the noise run (steps 25 % to
  75 %), in sequences: past the warm-up, and before the cosine's last decay,
  where the gradient shrinks towards the noise and ``B_simple`` grows
  without bound."""
  values = [b for s, b in record['noise']
            if record['steps'] / 4 <= s <= 3 * record['steps'] / 4 and
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
    scores = [r['validation_bpb'] for r in records]
    best = min(range(len(scores)), key=lambda i: (
        scores[i] if math.isfinite(scores[i]) else math.inf))
    if radius and best == 0 and lo > -radius - max_extensions:
      lo -= 1
    elif radius and best == len(scores) - 1 and \
        hi < radius + max_extensions:
      hi += 1
    else:
      return records[best]['lr'], records


def run(workdir: str, overrides: list[str], tiny: bool = False,
        ledger_path: str | None = None,
        seeds: list[int] | None = None) -> list[str]:
  """Runs the stages (skipping runs in the ledger); writes the report."""
  from examples import lm_report  # pylint: disable=g-import-not-at-top
  plan = Plan.tiny() if tiny else Plan()
  if seeds:
    plan = dataclasses.replace(plan, final_seeds=tuple(seeds))
  base = lm().replace(**{**BASE, **dict(plan.overrides)})
  base = config_lib.apply_overrides(base, overrides)
  if ledger_path is None:
    ledger_path = (os.path.join(workdir, 'runs.jsonl') if tiny else LEDGER)
  ledger = Ledger(ledger_path)

  def do(r: Run) -> dict:
    if r.key not in ledger.records:
      print(f'[{time.strftime("%H:%M:%S")}] {r.key}', flush=True)
      ledger.add(execute(base, plan, r, os.path.join(workdir, 'runs')))
    return ledger.records[r.key]

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
