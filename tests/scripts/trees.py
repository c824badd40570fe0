"""A tree comparison shared by the multi-device check scripts."""

import jax
import numpy as np


def close(a, b, what, rtol=1e-5, atol=1e-6):
  """Asserts two trees are leaf-wise close; the message names the path."""
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                          jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol, err_msg=f'{what} {path}')
