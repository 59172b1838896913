"""The shard_map path of u2qt.kernels.codebook_assign on 8 fake CPU devices.

The device count must be set before JAX starts, so the checks run in a fresh subprocess.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding
    from u2qt.kernels.codebook_assign import assign, assign_residual, reference
    assert jax.device_count() == 8, jax.devices()

    x_host = jax.random.normal(jax.random.key(0), (64, 24))
    c_host = jax.random.normal(jax.random.key(1), (100, 24))
    cs_host = 0.5 * jax.random.normal(jax.random.key(2), (3, 40, 24))
    want_index, want_distance = reference.assign(x_host, c_host, metric="cosine")
    want_codes, _ = reference.assign_residual(x_host, cs_host)

    def check(mesh, impl, ambient):
        rows = NamedSharding(mesh, jax.P("data"))
        x = jax.device_put(x_host, rows)
        c = jax.device_put(c_host, NamedSharding(mesh, jax.P()))
        cs = jax.device_put(cs_host, NamedSharding(mesh, jax.P()))
        kw = {} if ambient else {"mesh": mesh}
        f = jax.jit(lambda x, c, cs: (assign(x, c, metric="cosine", implementation=impl, **kw),
                                      assign_residual(x, cs, implementation=impl, **kw)))
        if ambient:
            with jax.set_mesh(mesh):
                (index, distance), (codes, _) = f(x, c, cs)
                hlo = f.lower(x, c, cs).compile().as_text()
        else:
            (index, distance), (codes, _) = f(x, c, cs)
            hlo = f.lower(x, c, cs).compile().as_text()
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_allclose(distance, want_distance, atol=1e-6)
        np.testing.assert_array_equal(codes, want_codes)
        for out in (index, codes):
            assert out.sharding.spec[0] == "data", out.sharding
        assert "all-gather" not in hlo, "x was gathered"

    for axis_type in (AxisType.Auto, AxisType.Explicit):
        mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
        for impl in ("reference", "chunked", "pallas_gpu_interpret", "pallas_tpu_interpret"):
            check(mesh, impl, ambient=False)
        check(mesh, "chunked", ambient=True)
    mesh2 = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    check(mesh2, "pallas_gpu_interpret", ambient=False)
    check(mesh2, "reference", ambient=True)

    # The GPU kernel lowers per shard, inside the manual computation (never gathered).
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    x = jax.device_put(x_host, NamedSharding(mesh, jax.P("data")))
    text = jax.jit(lambda x, c: assign(x, c, implementation="pallas_gpu", mesh=mesh)).trace(
        x, c_host).lower(lowering_platforms=("cuda",)).as_text()
    manual = text.index("sdy.manual_computation")
    assert manual < text.index("xla.gpu.triton"), "kernel outside shard_map"
    assert "tensor<8x32xf32>" in text, "kernel does not see the local 8-row shard"

    # Inside the caller's own shard_map the input is already local: nothing is wrapped again.
    def local(x, c):
        assert jax.sharding.get_abstract_mesh().manual_axes == ("data",)
        return assign(x, c, metric="cosine", implementation="pallas_gpu_interpret")
    with jax.set_mesh(mesh):
        index, _ = jax.jit(jax.shard_map(local, in_specs=(jax.P("data"), jax.P()),
                                         out_specs=jax.P("data"), check_vma=False))(x, c_host)
    np.testing.assert_array_equal(index, want_index)

    # N must split over the data axis.
    try:
        assign(jnp.ones((63, 24)), c_host, mesh=mesh)
    except ValueError as e:
        assert "do not split" in str(e)
    else:
        raise AssertionError("uneven N accepted")
    print("SHARDED-OK")
""")


def test_shard_map_path_on_8_cpu_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and "SHARDED-OK" in result.stdout, (
      result.stdout[-3000:] + result.stderr[-5000:])
