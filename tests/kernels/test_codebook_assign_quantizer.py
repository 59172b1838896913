"""The residual quantizer's training step is the same with every assignment implementation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from u2qt.quant.residual import residual_quantize

IMPLEMENTATIONS = ("reference", "chunked", "pallas_gpu_interpret", "pallas_tpu_interpret", None)


def _train_step(implementation, rotation_trick):
  def loss_fn(params, target):
    out = residual_quantize(params["z"], params["codebooks"], beta=0.25,
                            implementation=implementation, rotation_trick=rotation_trick)
    return out.loss + jnp.mean((out.z_q - target) ** 2), out.codes

  @jax.jit
  def step(params, target):
    (loss, codes), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, target)
    new_params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    return loss, codes, grads, new_params

  return step


@pytest.mark.parametrize("rotation_trick", [False, True])
def test_training_step_identical_across_implementations(rotation_trick):
  kz, kc, kt = jax.random.split(jax.random.key(0), 3)
  params = {"z": jax.random.normal(kz, (40, 24)),
            "codebooks": 0.5 * jax.random.normal(kc, (3, 70, 24))}
  target = jax.random.normal(kt, (40, 24))
  want = _train_step("reference", rotation_trick)(params, target)
  assert len(np.unique(np.asarray(want[1][:, 0]))) > 5  # codes actually vary
  for implementation in IMPLEMENTATIONS[1:]:
    got = _train_step(implementation, rotation_trick)(params, target)
    np.testing.assert_array_equal(got[1], want[1], err_msg=str(implementation))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7,
                                                         err_msg=str(implementation)),
                 got, want)
