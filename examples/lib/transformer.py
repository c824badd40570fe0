"""A decoder-only transformer language model in Flax NNX with scanned blocks.

The blocks are built once with ``nnx.vmap`` (a leading axis of length
``num_layers`` on every block parameter, recorded as the partition name
``'layers'``) and run with ``nnx.scan``: one compiled block however deep the
model. That is the layout of MaxText, praxis and most large LM codebases, and
the one where a per-leaf trust ratio would be wrong (one ratio for all layers);
``optax_lambc.layer_axes_from_flax(model)`` reads the 'layers' axis from the
metadata so that ``lambc`` computes one ratio per block.

Bytes are the tokens (vocabulary 256); positions are learned; the output
projection is tied to the token embedding (GPT-2).
"""

import jax
from flax import nnx

from examples.lib.config import TransformerConfig


def partition_names(*names) -> dict:
  """Partition names of a Param (``kernel_metadata=...``); the stacking
  ``nnx.vmap`` prepends 'layers'."""
  return {'out_sharding': names}


def _dense(d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
  init = nnx.initializers.normal(0.02)
  return nnx.Linear(d_in, d_out, kernel_init=init, rngs=rngs,
                    kernel_metadata=partition_names(None, None),
                    bias_metadata=partition_names(None))


def _layer_norm(d: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(d, rngs=rngs, scale_metadata=partition_names(None),
                       bias_metadata=partition_names(None))


class Block(nnx.Module):
  """Pre-norm block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

  def __init__(self, config: TransformerConfig, rngs: nnx.Rngs):
    d = config.d_model
    self.num_heads = config.num_heads
    self.ln1 = _layer_norm(d, rngs)
    self.qkv = _dense(d, 3 * d, rngs)
    self.proj = _dense(d, d, rngs)
    self.ln2 = _layer_norm(d, rngs)
    self.fc1 = _dense(d, config.mlp_dim, rngs)
    self.fc2 = _dense(config.mlp_dim, d, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    heads = self.qkv(self.ln1(x)).reshape(b, t, 3, self.num_heads,
                                          d // self.num_heads)
    q, k, v = (heads[:, :, i] for i in range(3))
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    x = x + self.proj(y.reshape(b, t, d))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class TransformerLM(nnx.Module):
  """Token + position embeddings, scanned pre-norm blocks, final norm, and
  logits through the tied embedding.

  Args:
    config: the sizes.
    rngs: parameter initialisation.

  ``model(tokens)`` maps int tokens ``(batch, length)`` to logits
  ``(batch, length, vocab_size)``; position ``i`` sees tokens ``<= i``.
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    if config.d_model % config.num_heads:
      raise ValueError(f'd_model {config.d_model} is not divisible by '
                       f'num_heads {config.num_heads}')
    self.config = config
    # The partition names are metadata for layer_axes_from_flax; placing
    # arrays is the training library's job (examples.lib.parallel).
    with nnx.use_eager_sharding(False):
      self._build(config, rngs)

  def _build(self, config: TransformerConfig, rngs: nnx.Rngs) -> None:
    self.embed = nnx.Embed(config.vocab_size, config.d_model, rngs=rngs,
                           embedding_init=nnx.initializers.normal(0.02))
    self.pos = nnx.Param(0.01 * jax.random.normal(
        rngs.params(), (config.max_len, config.d_model)))

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0,
              transform_metadata={nnx.PARTITION_NAME: 'layers'})
    def make_blocks(rngs):
      return Block(config, rngs)

    self.blocks = make_blocks(rngs)
    self.ln_f = nnx.LayerNorm(config.d_model, rngs=rngs)

  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout: the runs here see each byte about once
    length = tokens.shape[1]
    if length > self.config.max_len:
      raise ValueError(f'sequence length {length} exceeds max_len '
                       f'{self.config.max_len}')
    x = self.embed(tokens) + self.pos[:length]

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def run(x, block):
      return block(x)

    return self.embed.attend(self.ln_f(run(x, self.blocks)))
