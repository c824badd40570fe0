"""The gradient noise scale B_simple, from the micro-batch gradients of a step.

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training",
arXiv:1812.06162) define the simple noise scale ``B_simple = tr(Σ) / |G|²``:
``G`` is the true gradient and ``Σ`` the per-example gradient covariance. It
estimates the critical batch size: batches well below it waste no data;
batches well above it cost data for little gain in steps.

Both terms come from gradient norms at two batch sizes (their Appendix A.1).
A step with gradient accumulation has them for free: ``k`` micro-batches of
``b`` examples each, and their mean, the batch of ``B = k * b``. Since
``E|G_b|² = |G|² + tr(Σ)/b``,

- ``|G|² ≈ (B |G_B|² - b |G_b|²) / (B - b)``,
- ``tr(Σ) ≈ (|G_b|² - |G_B|²) / (1/b - 1/B)``,

with ``|G_b|²`` the mean over the micro-batches of their squared norms. Each
estimate is unbiased, but their ratio is not and one step's is noisy: sum
each over many steps (a log interval) before dividing, as the paper does with
moving averages. ``noise_scale`` is then in examples (sequences for the
language model; multiply by the sequence length for tokens).
"""

import jax
import jax.numpy as jnp


def squared_norm(tree) -> jax.Array:
  """``Σ x²`` over every leaf of a tree, in float32."""
  return sum((jnp.sum(jnp.square(x.astype(jnp.float32)))
              for x in jax.tree.leaves(tree)), jnp.zeros([], jnp.float32))


def estimate(small_sq: jax.Array, big_sq: jax.Array, small: float,
             big: float) -> dict[str, jax.Array]:
  """Unbiased estimates of ``|G|²`` and ``tr(Σ)`` from two batch sizes.

  Args:
    small_sq: mean squared norm of gradients of batches of ``small``
      examples.
    big_sq: squared norm of the gradient of a batch of ``big`` examples.
    small: the small batch size ``b``.
    big: the big batch size ``B > b``.

  Returns:
    ``{'grad_sq': |G|² estimate, 'trace': tr(Σ) estimate}``; sum each over
    steps, then ``noise_scale(trace_sum, grad_sq_sum)``.
  """
  if not big > small > 0:
    raise ValueError(f'need big > small > 0, got big={big}, small={small}')
  grad_sq = (big * big_sq - small * small_sq) / (big - small)
  trace = (small_sq - big_sq) / (1.0 / small - 1.0 / big)
  return {'grad_sq': grad_sq, 'trace': trace}


def noise_scale(trace: float, grad_sq: float) -> float:
  """``B_simple = tr(Σ) / |G|²`` (NaN when ``|G|²`` is not positive: the
  gradient is below the noise at this sample size)."""
  return trace / grad_sq if grad_sq > 0 else float('nan')
