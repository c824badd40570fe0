"""Flax NNX models: CIFAR and 64x64 ResNets, small nets for the demo, a
residual MLP whose blocks are stacked and scanned (the layout of scanned
transformers), and the registry that also holds the transformer language
models of ``examples.lib.transformer``."""

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

import optax_lambc
from examples.lib import transformer
from examples.lib.config import CLASSIFIERS, TRANSFORMERS


class BasicBlock(nnx.Module):
  """ResNet v1 basic block (two 3x3 convs) with a projection when needed."""

  def __init__(self, c_in: int, c_out: int, stride: int, bn: Callable,
               rngs: nnx.Rngs):
    conv = partial(nnx.Conv, use_bias=False, rngs=rngs)
    self.conv1 = conv(c_in, c_out, (3, 3), strides=stride)
    self.bn1 = bn(c_out)
    self.conv2 = conv(c_out, c_out, (3, 3))
    self.bn2 = bn(c_out, scale_init=nnx.initializers.zeros)
    needs_proj = stride != 1 or c_in != c_out
    self.proj = nnx.data(conv(c_in, c_out, (1, 1), strides=stride)
                         if needs_proj else None)
    self.proj_bn = nnx.data(bn(c_out) if needs_proj else None)

  def __call__(self, x, train: bool):
    ura = not train
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.bn2(self.conv2(y), use_running_average=ura)
    if self.proj is not None:
      x = self.proj_bn(self.proj(x), use_running_average=ura)
    return nnx.relu(x + y)


class ResNet(nnx.Module):
  """ResNet with a 3x3 stride-1 stem and no max-pool (small images).

  ``first_stride=1`` is the CIFAR ResNet-18 of the LAMBC paper's Sec. 4.1;
  ``first_stride=2`` suits 64x64 ImageNet (Sec. 4.3): 64 -> 32 -> ... -> 4.
  BatchNorm statistics are averaged over ``bn_axis_name`` under pmap and
  shard_map; under jit with shardings the batch mean is global already.
  """

  def __init__(self, stage_sizes, num_classes: int, width: int = 64,
               first_stride: int = 1, bn_axis_name: str | None = None, *,
               rngs: nnx.Rngs):
    bn = partial(nnx.BatchNorm, momentum=0.9, axis_name=bn_axis_name,
                 rngs=rngs)
    self.stem = nnx.Conv(3, width, (3, 3), use_bias=False, rngs=rngs)
    self.stem_bn = bn(width)
    blocks, c_in = [], width
    for i, n in enumerate(stage_sizes):
      c_out = width * 2 ** i
      for j in range(n):
        stride = (first_stride if i == 0 else 2) if j == 0 else 1
        blocks.append(BasicBlock(c_in, c_out, stride, bn, rngs))
        c_in = c_out
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(c_in, num_classes, rngs=rngs)

  def __call__(self, x, train: bool = False):
    x = nnx.relu(self.stem_bn(self.stem(x), use_running_average=not train))
    for block in self.blocks:
      x = block(x, train)
    return self.head(jnp.mean(x, axis=(1, 2)))


class SmallCNN(nnx.Module):
  """Two conv layers and a dense head: the offline digits demo (8x8x1)."""

  def __init__(self, num_classes: int, width: int = 32, *, rngs: nnx.Rngs,
               bn_axis_name: str | None = None, in_channels: int = 1):
    del bn_axis_name  # no BatchNorm
    self.conv1 = nnx.Conv(in_channels, width, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (3, 3), strides=2, rngs=rngs)
    self.dense = nnx.Linear(2 * width * 16, 128, rngs=rngs)
    self.head = nnx.Linear(128, num_classes, rngs=rngs)

  def __call__(self, x, train: bool = False):
    del train
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
    return self.head(x)


class ResidualBlock(nnx.Module):
  """Pre-norm residual MLP block: ``x + fc2(gelu(fc1(norm(x))))``.

  Every param carries partition names, so that ``nnx.vmap`` with
  ``transform_metadata`` records the layer axis on each of them.
  """

  def __init__(self, d: int, rngs: nnx.Rngs, annotate_norm: bool = True):
    names = transformer.partition_names
    norm_meta = dict(scale_metadata=names(None), bias_metadata=names(None)
                     ) if annotate_norm else {}
    self.norm = nnx.LayerNorm(d, rngs=rngs, **norm_meta)
    self.fc1 = nnx.Linear(d, 2 * d, rngs=rngs,
                          kernel_metadata=names(None, None),
                          bias_metadata=names(None))
    self.fc2 = nnx.Linear(2 * d, d, rngs=rngs,
                          kernel_metadata=names(None, None),
                          bias_metadata=names(None))

  def __call__(self, x):
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm(x))))


class StackedResidualMLP(nnx.Module):
  """``layers`` ResidualBlocks stacked in one module (leading axis 'layers',
  built with ``nnx.vmap``) and run with ``nnx.scan``, then a linear head."""

  def __init__(self, d: int, layers: int, num_classes: int, rngs: nnx.Rngs,
               annotate_norm: bool = True):

    @nnx.split_rngs(splits=layers)
    @nnx.vmap(in_axes=(0,), out_axes=0,
              transform_metadata={nnx.PARTITION_NAME: 'layers'})
    def make(rngs):
      return ResidualBlock(d, rngs, annotate_norm)

    self.blocks = make(rngs)
    self.head = nnx.Linear(d, num_classes, rngs=rngs)

  def __call__(self, x):

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def body(x, block):
      return block(x)

    return self.head(body(x, self.blocks))


def create_model(name: str, num_classes: int, width: int, seed: int,
                 bn_axis_name: str | None = None) -> nnx.Module:
  """The model ``name`` of ``config.CLASSIFIERS`` or ``config.TRANSFORMERS``
  (a transformer's size fixes its width; it has no BatchNorm)."""
  rngs = nnx.Rngs(seed)
  if name in TRANSFORMERS:
    return transformer.TransformerLM(TRANSFORMERS[name], rngs=rngs)
  if name not in CLASSIFIERS:
    raise ValueError(f'unknown model {name!r}; known: '
                     f'{", ".join((*CLASSIFIERS, *TRANSFORMERS))}')
  if CLASSIFIERS[name] is None:
    return SmallCNN(num_classes, width, rngs=rngs, bn_axis_name=bn_axis_name)
  stages, first_stride = CLASSIFIERS[name]
  return ResNet(stages, num_classes, width, first_stride, bn_axis_name,
                rngs=rngs)


def layer_axes(model: nnx.Module):
  """The optimizer's ``layer_axes``: read from the 'layers' partition
  metadata of models with stacked blocks; None (a leaf is a layer) else."""
  if isinstance(model, transformer.TransformerLM):
    return optax_lambc.layer_axes_from_flax(model)
  return None


def split(model: nnx.Module):
  """``(graphdef, params, batch_stats)``: the model's static structure and
  its ``nnx.State`` of Params and of BatchNorm statistics, as flax's
  functional API keeps them (``nnx.split``)."""
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, params, stats


def make_apply(graphdef) -> Callable:
  """``apply(params, batch_stats, x, train) -> (logits, new_batch_stats)``:
  ``nnx.merge`` the states into a model, call it, and split the updated
  statistics off again."""

  def apply(params, batch_stats, x, train: bool):
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    logits = model(x, train=train)
    return logits, nnx.state(model, nnx.BatchStat)

  return apply
