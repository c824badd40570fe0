"""Independent NumPy reference implementations, written from the formulas.

Nothing here imports JAX or optax. A "tree" is a plain list of NumPy arrays (the
flattened leaves, in the same order as the JAX pytree). Arithmetic happens in
each leaf's own dtype, with norms in at least float32, as the library promises.

A bound is None, a number, a function of the step count (0 on the first
update), or a list with one such value per leaf (for a stacked leaf, a value
may also be an array with one entry per stacked layer).

Stacked layers: ``layer_axes`` gives, per leaf, a tuple of the axes that index
layers. Such a leaf is cut into its layers explicitly (the layer axes moved to
the front, one row per layer) and each row is treated exactly as a whole leaf
would be; every per-layer quantity is a flat list over all layers, leaf by
leaf, in row-major order of the layer axes.
"""

import math

import numpy as np


def _norm_dtype(dtype):
  return np.promote_types(dtype, np.float32)


def _norm(x):
  x = x.astype(_norm_dtype(x.dtype))
  return np.sqrt(np.sum(x * x))


def _bound_values(spec, count, n, default):
  if spec is None:
    return [default] * n
  if isinstance(spec, (list, tuple)):
    return [s(count) if callable(s) else s for s in spec]
  v = spec(count) if callable(spec) else spec
  return [v] * n


def raw_ratio(w, u, trust_coefficient=1.0, eps=0.0, weight_norm_bounds=None):
  """tc * phi(|w|) / (|u| + eps); 1 at a zero norm; NaN if |u| is not finite."""
  wn, un = _norm(w), _norm(u)
  if not np.isfinite(un):
    return _norm_dtype(w.dtype).type(np.nan)
  if wn == 0 or un == 0:
    return _norm_dtype(w.dtype).type(1.0)
  phi = wn
  if weight_norm_bounds is not None:
    lo, hi = weight_norm_bounds
    phi = min(max(phi, lo), math.inf if hi is None else hi)
  return _norm_dtype(w.dtype).type(trust_coefficient * phi / (un + eps))


def _rows(x, axes):
  """The layers of a leaf: (n_layers, rest) rows, and how to put them back."""
  k = len(axes)
  moved = np.moveaxis(x, axes, tuple(range(k)))
  lead = moved.shape[:k]
  rows = moved.reshape((int(np.prod(lead)),) + moved.shape[k:])

  def back(r):
    return np.moveaxis(r.reshape(moved.shape), tuple(range(k)), axes)

  return rows, lead, back


def _per_layer(values, leaves, axes):
  """Per-leaf values (scalars or per-layer arrays) as a flat per-layer list."""
  out = []
  for v, p, ax in zip(values, leaves, axes, strict=True):
    lead = tuple(p.shape[a] for a in ax)
    out.extend(np.broadcast_to(np.asarray(v, np.float64), lead).ravel()
               .tolist())
  return out


class DynamicBounds:
  """AdaBound-style bounds: b(1 - 1/(g t + 1)), b(1 + 1/(g t)), t = count+1."""

  def __init__(self, final, gamma):
    self.final, self.gamma = final, gamma

  def bounds(self, count, n, dtype=np.float64):
    dt = _norm_dtype(dtype).type
    t, g = dt(count + 1), dt(self.gamma)
    b = [dt(x) for x in _bound_values(self.final, count, n, 1.0)]
    return ([x * (dt(1) - dt(1) / (g * t + dt(1))) for x in b],
            [x * (dt(1) + dt(1) / (g * t)) for x in b])

  def absorb(self, raw, applied):
    pass


class RunningStatBounds:
  """mean +- n std of the applied ratio (incremental EW moments), warm-up."""

  def __init__(self, n, n_std, decay, warmup_steps, lo=0.0, hi=None):
    self.n_std, self.decay, self.warmup = n_std, decay, warmup_steps
    self.lo, self.hi = lo, math.inf if hi is None else hi
    self.k = [0] * n
    self.mu = [0.0] * n
    self.var = [0.0] * n

  def bounds(self, count, n, dtype=np.float64):
    del dtype  # computed in float64; see the float32 tolerance in the tests.
    ns = _bound_values(self.n_std, count, n, 3.0)
    lower, upper = [], []
    for i in range(n):
      if count < self.warmup or self.k[i] == 0:
        lower.append(self.lo)
        upper.append(self.hi)
        continue
      sigma = math.sqrt(self.var[i])
      lower.append(max(self.mu[i] - ns[i] * sigma, self.lo))
      upper.append(min(self.mu[i] + ns[i] * sigma, self.hi))
    return lower, upper

  def absorb(self, raw, applied):
    alpha = 1 - self.decay
    for i, x in enumerate(applied):
      if not np.isfinite(x):
        continue
      x = float(x)
      if self.k[i] == 0:
        self.mu[i], self.var[i] = x, 0.0
      else:
        delta = x - self.mu[i]
        self.mu[i] += alpha * delta
        self.var[i] = (1 - alpha) * (self.var[i] + alpha * delta * delta)
      self.k[i] += 1


class Lambc:
  """LAMBC on a list of leaves; ``step(grads, params)`` returns new params.

  After each step ``self.raw``, ``self.applied``, ``self.lower`` and
  ``self.upper`` hold flat per-layer lists over the adapted leaves, and
  ``self.cond`` each layer's condition number ``(|r| + wd |w|) / |u|``: where
  the Adam step r nearly cancels the decay (u = r + wd w small), rounding in r
  is magnified by that factor in the ratio, so comparisons must allow it.
  """

  def __init__(self, params, learning_rate, b1=0.9, b2=0.999, eps=1e-6,
               eps_root=0.0, weight_decay=0.0, min_trust_ratio=0.0,
               max_trust_ratio=1.0, weight_decay_mask=None,
               trust_ratio_mask=None, bias_correction=True,
               trust_coefficient=1.0, weight_norm_bounds=None, policy=None,
               layer_axes=None):
    n = len(params)
    self.lr, self.b1, self.b2, self.eps, self.eps_root = (
        learning_rate, b1, b2, eps, eps_root)
    self.wd = weight_decay
    self.min, self.max, self.policy = min_trust_ratio, max_trust_ratio, policy
    self.wd_mask = weight_decay_mask or [True] * n
    self.tr_mask = trust_ratio_mask or [True] * n
    self.axes = layer_axes or [()] * n
    self.bias_correction = bias_correction
    self.tc, self.wnb = trust_coefficient, weight_norm_bounds
    self.m = [np.zeros_like(p) for p in params]
    self.v = [np.zeros_like(p) for p in params]
    self.count = 0

  def step(self, grads, params):
    t, n = self.count + 1, len(params)
    adapted = [i for i in range(n) if self.tr_mask[i]]
    a_leaves = [params[i] for i in adapted]
    a_axes = [self.axes[i] for i in adapted]
    lower = _bound_values(self.min, self.count, n, 0.0)
    lower = _per_layer([lower[i] for i in adapted], a_leaves, a_axes)
    if self.policy is not None:
      p_lo, upper = self.policy.bounds(self.count, len(lower),
                                       params[0].dtype)
      lower = [max(a, b) for a, b in zip(lower, p_lo, strict=True)]
    else:
      upper = _bound_values(self.max, self.count, n, math.inf)
      upper = _per_layer([upper[i] for i in adapted], a_leaves, a_axes)
    lower = [max(x, 0.0) for x in lower]  # bounds are clamped at 0
    upper = [max(x, 0.0) for x in upper]
    lr = self.lr(self.count) if callable(self.lr) else self.lr
    wd = self.wd(self.count) if callable(self.wd) else self.wd
    new_params, self.raw, self.applied, self.cond = [], [], [], []
    for i, (g, p) in enumerate(zip(grads, params, strict=True)):
      dt = p.dtype.type
      self.m[i] = dt(self.b1) * self.m[i] + dt(1 - self.b1) * g
      self.v[i] = dt(self.b2) * self.v[i] + dt(1 - self.b2) * g * g
      if self.bias_correction:
        # 1 - b**t in the leaf's dtype, as the optimizer computes it.
        m_hat = self.m[i] / (dt(1) - dt(self.b1) ** dt(t))
        v_hat = self.v[i] / (dt(1) - dt(self.b2) ** dt(t))
      else:
        m_hat, v_hat = self.m[i], self.v[i]
      r = m_hat / (np.sqrt(v_hat + dt(self.eps_root)) + dt(self.eps))
      decay = dt(wd) if self.wd_mask[i] else dt(0)
      u = r + decay * p if self.wd_mask[i] else r
      if self.tr_mask[i]:
        w_rows, _, _ = _rows(p, self.axes[i])
        u_rows, _, back = _rows(u, self.axes[i])
        r_rows, _, _ = _rows(r, self.axes[i])
        scaled = []
        for w_row, u_row, r_row in zip(w_rows, u_rows, r_rows, strict=True):
          un = _norm(u_row)
          self.cond.append(float((_norm(r_row) + decay * _norm(w_row)) / un)
                           if un > 0 else 1.0)
          j = len(self.raw)
          r = raw_ratio(w_row, u_row, self.tc, 0.0, self.wnb)
          a = r if np.isnan(r) else min(max(r, lower[j]), upper[j])
          a = _norm_dtype(p.dtype).type(a)
          self.raw.append(r)
          self.applied.append(a)
          scaled.append((u_row * a).astype(p.dtype))
        u = back(np.stack(scaled))
      new_params.append((p - dt(lr) * u).astype(p.dtype))
    if self.policy is not None:
      self.policy.absorb(self.raw, self.applied)
    self.lower, self.upper = lower, upper
    self.count += 1
    return new_params


def larc(params, learning_rate, momentum=0.9, weight_decay=0.0,
         trust_coefficient=0.001, clip=True, eps=1e-8, nesterov=False,
         layer_axes=None):
  """Returns a ``step(grads, params) -> params`` closure for LARC."""
  buf = [np.zeros_like(p) for p in params]
  count = [0]
  axes = layer_axes or [()] * len(params)

  def step(grads, params):
    lr = learning_rate(count[0]) if callable(learning_rate) else learning_rate
    wd = weight_decay(count[0]) if callable(weight_decay) else weight_decay
    out = []
    for i, (g, p) in enumerate(zip(grads, params, strict=True)):
      dt = p.dtype.type
      g_rows, _, back = _rows(g, axes[i])
      w_rows, _, _ = _rows(p, axes[i])
      rows = []
      for g_row, w_row in zip(g_rows, w_rows, strict=True):
        wn, gn = _norm(w_row), _norm(g_row)
        if wn == 0 or gn == 0:
          local = 1.0
        else:
          local = trust_coefficient * wn / (gn + wd * wn + eps)
        scale = min(local / lr, 1.0) if clip else local
        rows.append(((g_row + dt(wd) * w_row) *
                     _norm_dtype(p.dtype).type(scale)).astype(p.dtype))
      d = back(np.stack(rows))
      buf[i] = dt(momentum) * buf[i] + d
      step_dir = d + dt(momentum) * buf[i] if nesterov else buf[i]
      out.append((p - dt(lr) * step_dir).astype(p.dtype))
    count[0] += 1
    return out

  return step
