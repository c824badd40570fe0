"""optax_lambc: LAMB with a clipped layer-wise trust ratio, as optax transforms.

The public API; every name is documented where it is defined.
"""

from optax_lambc.alias import lambc
from optax_lambc.alias import scale_by_uncorrected_adam
from optax_lambc.alias import with_input_checks
from optax_lambc.bounds import BoundPolicy
from optax_lambc.bounds import dynamic_bounds
from optax_lambc.bounds import running_stat_bounds
from optax_lambc.bounds import RunningStatBoundsState
from optax_lambc.flax_metadata import layer_axes_from_flax
from optax_lambc.larc import larc
from optax_lambc.larc import scale_by_larc_trust_ratio
from optax_lambc.masks import exclude_bias_and_norm
from optax_lambc.layers import leaf_norm
from optax_lambc.layers import ScaleByClippedTrustRatioState
from optax_lambc.telemetry import nonfinite_leaves
from optax_lambc.telemetry import trust_ratio_stats
from optax_lambc.telemetry import TrustRatioStats
from optax_lambc.trust_ratio import scale_by_clipped_trust_ratio

__version__ = '0.2.0'

__all__ = (
    'BoundPolicy',
    'RunningStatBoundsState',
    'ScaleByClippedTrustRatioState',
    'TrustRatioStats',
    'dynamic_bounds',
    'exclude_bias_and_norm',
    'lambc',
    'larc',
    'layer_axes_from_flax',
    'leaf_norm',
    'nonfinite_leaves',
    'running_stat_bounds',
    'scale_by_clipped_trust_ratio',
    'scale_by_larc_trust_ratio',
    'scale_by_uncorrected_adam',
    'trust_ratio_stats',
    'with_input_checks',
)
