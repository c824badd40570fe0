"""The training CLI survives SIGKILL at any moment, and guards against NaNs.

A real ``python -m examples.main`` subprocess (the offline digits preset) is
killed with SIGKILL at several steps (wherever in the step, or in a checkpoint
write, the signal lands), stopped once with SIGTERM, and killed once while
orbax is writing a checkpoint; the same command is rerun until it finishes.
The final params, optimizer state (bound-policy state included) and eval
metrics must be bit-identical to an uninterrupted run, no partial checkpoint
may be restored, and ``metrics.jsonl`` must hold each ``(split, step)`` row
exactly once.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from helpers import own_compilation_cache


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24
ARGS = ['--set', 'global_batch_size=64', '--set', f'num_train_steps={STEPS}',
        '--set', 'checkpoint_every_steps=4', '--set', 'log_every_steps=2',
        '--set', 'eval_every_steps=12', '--set', 'progress=false',
        '--set', 'bound_policy=running', '--set', 'policy_warmup_steps=2',
        '--set', 'width=8', '--set', 'plots=false']  # plots: the Ctrl-C test


def _env(**extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', **extra)
  env.pop('XLA_FLAGS', None)
  return env


def _cmd(workdir, *extra, faults: bool = False) -> list[str]:
  """The training command; ``faults``: through the test-only fault injector
  (``tests/scripts/faulty_train.py``, driven by ``FAULT_*`` variables)."""
  entry = (['tests/scripts/faulty_train.py'] if faults else
           ['-m', 'examples.main'])
  return [sys.executable, *entry, 'digits', '--workdir', str(workdir), *ARGS,
          *extra]


def _rows(workdir) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _reject(token: str):
  raise ValueError(f'not strict JSON: {token}')


def _last_step(workdir) -> int:
  try:
    return max((r['step'] for r in _rows(workdir)), default=0)
  except (json.JSONDecodeError, KeyError):  # a row being written
    return 0


def _final_checkpoint(workdir) -> dict:
  """The latest checkpoint's arrays by path, read as NumPy (whatever devices
  and processes wrote them)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  root = os.path.join(workdir, 'checkpoints')
  step = ocp.CheckpointManager(root).latest_step()
  path = os.path.join(root, str(step), 'state')
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  meta = getattr(getattr(meta, 'item_metadata', meta), 'tree', meta)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                      meta)
  tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def _written_since(workdir, start_ns: int) -> bool:
  """Whether this run has touched metrics.jsonl (truncated or appended)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  return os.path.exists(path) and os.stat(path).st_mtime_ns >= start_ns


def _run_until_killed(workdir, kill_at_step: int,
                      sig: int = signal.SIGKILL) -> str:
  """Starts the command and signals it once it has logged ``kill_at_step``.

  Only rows this run wrote count: until it has restored its checkpoint and
  truncated metrics.jsonl, the file still holds the previous run's rows.
  """
  start_ns = time.time_ns()
  proc = subprocess.Popen(_cmd(workdir), cwd=ROOT,
                          env=own_compilation_cache(_env(), 'killed'),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline:
    if (_written_since(workdir, start_ns) and
        _last_step(workdir) >= kill_at_step):
      proc.send_signal(sig)
      break
    time.sleep(0.02)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode in (-signal.SIGKILL, 130, 0), out[-3000:]
  return out


_STOPPED = re.compile(r'stopped at step (\d+); last checkpoint at step (\d+)')


def test_sigkill_at_random_moments_ends_bit_identical(tmp_path):
  full = tmp_path / 'full'
  out = subprocess.run(_cmd(full), cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

  work = tmp_path / 'killed'
  # Three kills, each once a run has logged that step (wherever in the step
  # or in a checkpoint write the signal then lands): after the first
  # checkpoint (4); a SIGTERM; a SIGKILL far enough past that stop that the
  # run trains steps of its own and writes the scheduled step-12 checkpoint,
  # and early enough that the kill during a save below lands before the end.
  kill_steps = (6, 9, 14)
  outputs = []
  for i, step in enumerate(kill_steps):
    # One preemption (SIGTERM): the step in flight is checkpointed, and the
    # next run resumes from it (no step is lost).
    sig = signal.SIGTERM if i == 1 else signal.SIGKILL
    outputs.append(_run_until_killed(work, int(step), sig))
    if sig == signal.SIGTERM:
      m = _STOPPED.search(outputs[-1])
      assert m and m.group(1) == m.group(2), outputs[-1][-2000:]
      stopped = int(m.group(1))
    if i == 2:
      # The run after the SIGTERM resumed from the very step it stopped at
      # (and was killed itself after it had logged a step of its own).
      assert f'resumed from step {stopped} ' in outputs[-1], outputs[-1][-2000:]
      # Once while the step-N checkpoint is being written: the fault
      # injector SIGKILLs the process right after orbax's save has started.
      n = (_last_step(work) // 4 + 1) * 4
      killed = subprocess.run(
          _cmd(work, faults=True), cwd=ROOT, capture_output=True, text=True,
          timeout=600, env=own_compilation_cache(
              _env(FAULT_KILL_DURING_SAVE=str(n)), 'killed'))
      assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
      leftovers = [p for p in os.listdir(work / 'checkpoints')
                   if p.startswith(f'{n}.') or p == str(n)]
      assert leftovers and str(n) not in leftovers, leftovers  # partial only
      resumed = subprocess.run(
          _cmd(work, '--set', f'stop_after_steps={n + 1}'), cwd=ROOT,
          capture_output=True, text=True, timeout=600, env=_env())
      assert resumed.returncode == 0, resumed.stderr[-3000:]
      # The partial step-n checkpoint is never restored.
      assert f'resumed from step {n - 4} ' in resumed.stdout, resumed.stdout
  final = subprocess.run(_cmd(work), cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=600)
  assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
  assert 'resumed from step' in final.stdout
  # Every kill landed in training, after the run had restored its checkpoint
  # (all but the first run, which started from nothing).
  assert all('resumed from step' in o for o in outputs[1:]), kill_steps

  want, got = _final_checkpoint(full), _final_checkpoint(work)
  assert want.keys() == got.keys()
  assert any('opt_state' in k and 'mean' in k for k in want)  # policy state
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)

  rows_full, rows = _rows(full), _rows(work)
  keys = [(r['split'], r['step']) for r in rows]
  assert len(keys) == len(set(keys)), 'duplicated rows after resume'
  assert sorted(keys) == sorted((r['split'], r['step']) for r in rows_full)
  evals = lambda rs: [(r['step'], r['loss'], r['accuracy']) for r in rs
                      if r['split'] == 'eval']
  assert evals(rows) == evals(rows_full)


def test_sigterm_prints_how_to_resume(tmp_path):
  proc = subprocess.Popen(_cmd(tmp_path, '--set', 'num_train_steps=100000'),
                          cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while _last_step(tmp_path) < 6 and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  lines = [line for line in err.splitlines() if line.strip()]
  assert 'Traceback' not in err, err[-3000:]
  # The step in flight is checkpointed (not only the last scheduled one),
  # and the message has a line of its own.
  m = _STOPPED.fullmatch(lines[-1].split(';  ')[0].rsplit('; rerun', 1)[0])
  assert m and m.group(1) == m.group(2), lines[-1]
  assert lines[-1].endswith('rerun the same command to resume')


def test_ctrl_c_on_the_shipped_digits_preset_checkpoints_and_resumes(
    tmp_path):
  # The preset as shipped: no periodic checkpoints (checkpoint_every_steps=0).
  short = ['--set', 'global_batch_size=64', '--set', 'num_train_steps=16',
           '--set', 'log_every_steps=1', '--set', 'progress=false']
  cmd = lambda work, *extra: [sys.executable, '-m', 'examples.main',
                              'digits', '--workdir', str(work), *short,
                              *extra]
  full = tmp_path / 'full'  # uninterrupted; it saves its final step only
  out = subprocess.run(cmd(full, '--set', 'checkpoint_every_steps=16'),
                       cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  work = tmp_path / 'stopped'
  start_ns = time.time_ns()
  proc = subprocess.Popen(cmd(work), cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 300
  while time.time() < deadline and not (
      _written_since(work, start_ns) and _last_step(work) >= 5):
    time.sleep(0.02)
  proc.send_signal(signal.SIGINT)  # Ctrl-C
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  m = _STOPPED.search(err)
  assert m and m.group(1) == m.group(2), err[-2000:]  # the message is true
  stopped = int(m.group(1))
  assert 5 <= stopped < 16
  # The stop wrote the plots of what was logged.
  for name in ('loss.png', 'accuracy.png', 'trust_ratio_raw.png'):
    assert (work / name).stat().st_size > 1000, name
  again = subprocess.run(cmd(work), cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resumed from step {stopped} ' in again.stdout, again.stdout
  want, got = _final_checkpoint(full), _final_checkpoint(work)
  assert want.keys() == got.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  assert [r for r in _rows(work) if r['split'] == 'eval'] == [
      r for r in _rows(full) if r['split'] == 'eval']


def test_nonfinite_loss_stops_with_the_layer_names(tmp_path):
  out = subprocess.run(_cmd(tmp_path, faults=True), cwd=ROOT,
                       env=_env(FAULT_NAN_AT_STEP='5'), capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 1, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  assert 'non-finite loss at step 6' in out.stderr
  assert "'conv1/kernel'" in out.stderr  # a layer is named
  rows = _rows(tmp_path)
  assert max(r['step'] for r in rows) == 6  # stopped at the next log step
  # The row is strict JSON: NaN trust ratios are strings a strict parser
  # takes; the loss is the mean over the interval's finite steps (step 5's)
  # and the NaN step is counted.
  strict = [json.loads(line, parse_constant=_reject) for line in
            (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  last = strict[-1]
  assert last['step'] == 6 and last['nonfinite_steps'] == 1
  assert last['trust_ratio/raw/conv1/kernel'] == 'NaN'
  assert isinstance(last['loss'], float) and math.isfinite(last['loss'])


def test_skip_nonfinite_steps_counts_and_names_them(tmp_path):
  out = subprocess.run(_cmd(tmp_path, '--set', 'skip_nonfinite_steps=3',
                            '--set', 'num_train_steps=8', faults=True),
                       cwd=ROOT, env=_env(FAULT_NAN_AT_STEP='5'),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  train = {r['step']: r for r in _rows(tmp_path) if r['split'] == 'train'}
  assert train[6]['skipped_steps'] == 1 and train[6]['nonfinite_steps'] == 1
  assert 'conv1/kernel' in train[6]['nonfinite_layers']
  assert np.isfinite(train[6]['loss']) and np.isfinite(train[8]['loss'])
  assert train[8]['nonfinite_layers'] == [] and train[8]['skipped_steps'] == 1


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def _start_two(workdir) -> list[subprocess.Popen]:
  port = _free_port()
  return [subprocess.Popen(
      _cmd(workdir), cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, env=dict(
          own_compilation_cache(_env(), f'two-p{i}'),
          XLA_FLAGS='--xla_force_host_platform_device_count=2',
          JAX_COORDINATOR=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
          JAX_PROCESS_ID=str(i), JAX_HEARTBEAT_TIMEOUT_SECONDS='10'))
          for i in range(2)]


# How a survivor is stopped: the coordination service's message, or gloo's
# transport failing inside the collective in flight.
_STOPPED_BY_PEER_DEATH = re.compile(
    r'another task died|stopped sending heartbeats|'
    r'gloo::EnforceNotMet|gloo/transport/tcp/pair\.cc')


def test_two_processes_survive_a_kill(tmp_path):
  full = tmp_path / 'full'
  procs = _start_two(full)
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:]

  work = tmp_path / 'killed'
  procs = _start_two(work)
  deadline = time.time() + 300
  while _last_step(work) < 10 and time.time() < deadline:
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)
  survivor = procs[0].communicate(timeout=120)[0]
  procs[1].communicate(timeout=60)
  # The survivor does not hang (communicate's timeout catches a hang): it
  # aborts, stopped either by JAX's coordination service (the missed
  # heartbeats, after about 7-11 s here) or, sooner, by gloo aborting inside
  # the collective in flight ("Received data size doesn't match expected
  # size", 0.2 s after the kill; 3 of 26 kills on 2 loaded cores, none of 11
  # on idle ones).
  assert procs[0].returncode == -signal.SIGABRT, survivor[-3000:]
  assert _STOPPED_BY_PEER_DEATH.search(survivor), survivor[-3000:]

  # A preemption that reaches only one process: both stop after the same
  # step and checkpoint it.
  procs = _start_two(work)
  deadline = time.time() + 300
  first = _last_step(work)
  while _last_step(work) < first + 4 and time.time() < deadline:
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  logs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [130, 130], logs[0][-3000:]
  stops = [_STOPPED.search(log) for log in logs]
  assert stops[0] and stops[0].groups() == stops[1].groups(), logs[1][-2000:]
  assert stops[0].group(1) == stops[0].group(2)

  procs = _start_two(work)
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:]
  assert f'resumed from step {stops[0].group(1)} ' in logs[0]
  want, got = _final_checkpoint(full), _final_checkpoint(work)
  assert want.keys() == got.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
