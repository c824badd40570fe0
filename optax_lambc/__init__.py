"""optax_lambc: LAMB with a clipped layer-wise trust ratio, as optax transforms.

Every public name is defined in a private module and documented there.
"""

from optax_lambc._bounds import (BoundPolicy, Resolver, RunningStatBoundsState,
                                 dynamic_bounds, running_stat_bounds)
from optax_lambc._flax import layer_axes_from_flax
from optax_lambc._lambc import (ScaleByClippedTrustRatioState, lambc,
                                scale_by_clipped_trust_ratio,
                                scale_by_uncorrected_adam)
from optax_lambc._larc import larc, scale_by_larc_trust_ratio
from optax_lambc._layers import (Axes, Bound, BoundTree, FixedMaskState,
                                 LayerAxes, exclude_bias_and_norm, leaf_norm)
from optax_lambc._telemetry import (TrustRatioStats, nonfinite_leaves,
                                    trust_ratio_stats)

__version__ = '0.4.0'

__all__ = (
    'Axes', 'Bound', 'BoundPolicy', 'BoundTree', 'FixedMaskState', 'LayerAxes',
    'Resolver', 'RunningStatBoundsState', 'ScaleByClippedTrustRatioState',
    'TrustRatioStats', 'dynamic_bounds', 'exclude_bias_and_norm', 'lambc',
    'larc', 'layer_axes_from_flax', 'leaf_norm', 'nonfinite_leaves',
    'running_stat_bounds', 'scale_by_clipped_trust_ratio',
    'scale_by_larc_trust_ratio', 'scale_by_uncorrected_adam',
    'trust_ratio_stats',
)
