"""Benchmark of codebook assignment: every implementation against a matmul of the same shape.

        python -m u2qt.kernels.bench                    # preset for the default backend (gpu/tpu/cpu)
        python -m u2qt.kernels.bench --preset cpu-quick --json bench.json

Per (N, K, D, dtype) it prints the median device-synchronized time, achieved TFLOP/s (2·N·K·D),
the rate as a percentage of a plain matmul x·Cᵀ (output in the input dtype) of the same shape
measured in the same run, and of a large square matmul (the device's measured matmul peak), the
speed-up over the plain-jnp reference, and the compiled function's temporary memory (XLA's
``memory_analysis``: what the implementation allocates beyond inputs and outputs). The fused
residual table (L levels) reports bandwidth against a measured device copy. Writes JSON with
``--json``. ``auto`` is what ``implementation=None`` picks for that shape.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import random
import statistics
import time

import jax
import jax.numpy as jnp

from u2qt.kernels.codebook_assign import api, config, pallas_gpu, pallas_tpu, residual

PRESETS = {
        # (N, K, D) for single-level assignment; residual (N, L, K, D).
        "gpu": dict(
                assign=[(65536, k, d) for d in (16, 128, 1024) for k in (64, 1024, 8192, 65536)],
                residual=[(1 << 20, 3, 256, d) for d in (32, 64, 128)],
                dtypes=("bfloat16", "float32"),
                implementations=("reference", "chunked", "pallas_gpu", "auto")),
        "tpu": dict(
                assign=[(65536, k, d) for d in (16, 128, 1024) for k in (64, 1024, 8192, 65536)],
                residual=[(1 << 20, 3, 256, d) for d in (32, 64, 128)],
                dtypes=("bfloat16", "float32"),
                implementations=("reference", "chunked", "pallas_tpu", "auto")),
        "cpu": dict(
                assign=[(4096, k, 128) for k in (256, 1024, 2048, 4096, 8192, 16384)],
                residual=[(16384, 3, 256, d) for d in (32, 128)],
                dtypes=("float32",),
                implementations=("reference", "chunked", "auto")),
        "smoke": dict(  # for the test that the script runs end to end
                assign=[(96, 200, 16)],
                residual=[(64, 2, 40, 16)],
                dtypes=("float32",),
                implementations=("reference", "chunked", "auto")),
        "cpu-quick": dict(
                assign=[(2048, k, 64) for k in (256, 4096)],
                residual=[(4096, 3, 256, 32)],
                dtypes=("float32",),
                implementations=("reference", "chunked", "auto")),
}


def _time_all(fns: dict, args, reps: int) -> dict:
    """Median seconds over ``reps`` synchronized calls of each fn, interleaved in a fresh random
    order each round so that every implementation sees the same machine load and cache state; one
    warm-up call each first. A fn that fails to compile or run maps to the exception instead."""
    times, live = {name: [] for name in fns}, {}
    for name, fn in fns.items():
        try:
            jax.block_until_ready(fn(*args))
            live[name] = fn
        except Exception as e:  # noqa: BLE001  (report and keep going: one row per failure)
            times[name] = e
    order = list(live)
    for round_ in range(reps):
        random.Random(round_).shuffle(order)
        for name in order:
            fn = live[name]
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: t if isinstance(t, Exception) else statistics.median(t) for name, t in times.items()}


def _temp_bytes(fn, *args) -> int | None:
    try:
        return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
    except Exception:  # noqa: BLE001  (not every backend reports it)
        return None


def _inputs(key, n, k, d, dtype, levels=None):
    kx, kc = jax.random.split(key)
    x = jax.random.normal(kx, (n, d), jnp.float32).astype(dtype)
    shape = (k, d) if levels is None else (levels, k, d)
    return x, (0.5 * jax.random.normal(kc, shape, jnp.float32)).astype(dtype)


def _matmul(x, c):
    """x·Cᵀ with the output in the input dtype: what XLA does for a plain matmul of this shape."""
    return jax.lax.dot_general(x, c, (((1,), (1,)), ((), ())))


def peak_matmul_tflops(dtype, reps) -> float:
    """Measured rate of a square matmul large enough to be compute-bound."""
    m = 8192 if jax.default_backend() != "cpu" else 1024
    a, b = _inputs(jax.random.key(2), m, m, m, jnp.dtype(dtype))
    t = _time_all({"mm": jax.jit(_matmul)}, (a, b), reps)["mm"]
    return 2 * m**3 / t / 1e12


def _results(timed, names, fns, x, c):
    """{impl: (resolved name, seconds or None, temp bytes or error text)} and the reference's time."""
    results = {impl: (names[impl], None, f"{type(t).__name__}: {str(t)[:80]}")
               if isinstance(t, Exception) else (names[impl], t, _temp_bytes(fns[impl], x, c))
               for impl, t in timed.items()}
    return results, results.get("reference", (None, None))[1]


def bench_assign(shapes, dtypes, implementations, reps, metric):
    rows = []
    for dtype in dtypes:
        peak = peak_matmul_tflops(dtype, reps)
        for n, k, d in shapes:
            x, c = _inputs(jax.random.key(0), n, k, d, jnp.dtype(dtype))
            flops = 2 * n * k * d
            names = {impl: api.choose(n, k, d) if impl == "auto" else impl for impl in implementations}
            fns = {impl: jax.jit(functools.partial(api.assign, metric=metric, implementation=name))
                   for impl, name in names.items()}
            timed = _time_all({"matmul": jax.jit(_matmul), **fns}, (x, c), reps)
            t_matmul = timed.pop("matmul")
            results, t_ref = _results(timed, names, fns, x, c)
            for impl, (name, t, mem) in results.items():
                rows.append(dict(
                        table="assign", n=n, k=k, d=d, dtype=dtype, metric=metric, implementation=impl,
                        resolved=name, time_ms=None if t is None else 1e3 * t,
                        tflops=None if t is None else flops / t / 1e12,
                        pct_of_matmul=None if t is None else 100 * t_matmul / t,
                        pct_of_peak_matmul=None if t is None else 100 * flops / t / 1e12 / peak,
                        peak_matmul_tflops=peak,
                        speedup_vs_reference=None if (t is None or t_ref is None) else t_ref / t,
                        temp_mib=mem / 2**20 if isinstance(mem, int) else None,
                        error=mem if isinstance(mem, str) else None,
                        matmul_ms=1e3 * t_matmul, matmul_tflops=flops / t_matmul / 1e12))
    return rows


def measured_bandwidth(reps) -> float:
    """Bytes/s of a large device copy (read + write), the memory roofline for the residual table."""
    a = jnp.ones((64 << 20,) if jax.default_backend() != "cpu" else (8 << 20,), jnp.float32)
    t = _time_all({"copy": jax.jit(lambda a: a + 1)}, (a,), reps)["copy"]
    return 2 * a.size * a.itemsize / t


def bench_residual(shapes, dtypes, implementations, reps):
    rows = []
    bandwidth = measured_bandwidth(reps)
    for dtype in dtypes:
        for n, levels, k, d in shapes:
            x, c = _inputs(jax.random.key(1), n, k, d, jnp.dtype(dtype), levels=levels)
            moved = x.size * x.itemsize + c.size * c.itemsize + n * levels * 8
            flops = 2 * n * levels * k * d
            names = {impl: api.choose(n, k, d, residual=True) if impl == "auto" else impl
                     for impl in implementations}
            fns = {impl: jax.jit(functools.partial(api.assign_residual, implementation=name))
                   for impl, name in names.items()}
            timed = _time_all(fns, (x, c), reps)
            results, t_ref = _results(timed, names, fns, x, c)
            for impl, (name, t, mem) in results.items():
                rows.append(dict(
                        table="residual", n=n, levels=levels, k=k, d=d, dtype=dtype, implementation=impl,
                        resolved=name, time_ms=None if t is None else 1e3 * t,
                        tflops=None if t is None else flops / t / 1e12,
                        gb_per_s=None if t is None else moved / t / 1e9,
                        pct_of_bandwidth=None if t is None else 100 * moved / t / bandwidth,
                        speedup_vs_reference=None if (t is None or t_ref is None) else t_ref / t,
                        temp_mib=mem / 2**20 if isinstance(mem, int) else None,
                        error=mem if isinstance(mem, str) else None,
                        device_bandwidth_gb_per_s=bandwidth / 1e9))
    return rows


SWEEP_SHAPES = dict(assign=(65536, 8192, 128), residual=(1 << 20, 3, 256, 128))


def _sweep_configs(backend):
    if backend == "gpu":
        return [config.PallasGpuConfig(block_n=bn, block_k=bk, num_warps=w, num_stages=s)
                for bn in (64, 128, 256) for bk in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4)]
    return [config.PallasTpuConfig(block_n=bn, block_k=bk)
            for bn in (128, 256, 512) for bk in (256, 512, 1024, 2048)]


def sweep(dtype, reps):
    """Times the Pallas kernels over a grid of block configs at the target shapes (bf16)."""
    backend = jax.default_backend()
    if backend not in ("gpu", "tpu"):
        raise SystemExit("--sweep needs a GPU or TPU")
    single = pallas_gpu.assign if backend == "gpu" else pallas_tpu.assign
    fused = residual.assign_residual_gpu if backend == "gpu" else residual.assign_residual_tpu
    n, k, d = SWEEP_SHAPES["assign"]
    x, c = _inputs(jax.random.key(0), n, k, d, jnp.dtype(dtype))
    rn, levels, rk, rd = SWEEP_SHAPES["residual"]
    rx, rc = _inputs(jax.random.key(1), rn, rk, rd, jnp.dtype(dtype), levels=levels)
    for name, fn, args, flops in (("assign", single, (x, c), 2 * n * k * d),
                                  ("residual", fused, (rx, rc), 2 * rn * levels * rk * rd)):
        fns = {cfg: jax.jit(functools.partial(fn, config=cfg)) for cfg in _sweep_configs(backend)}
        timed = _time_all(fns, args, reps)
        ok = sorted((t, cfg) for cfg, t in timed.items() if not isinstance(t, Exception))
        print(f"\n{name} {args[0].shape} x {args[1].shape} {dtype}: best configs "
              f"({len(timed) - len(ok)} failed to compile or run)")
        for t, cfg in ok[:8]:
            print(f"  {1e3 * t:8.3f} ms  {flops / t / 1e12:7.1f} TFLOP/s  {cfg}")


def _fmt(value, spec):
    return "—" if value is None else format(value, spec)


def print_tables(rows):
    assign_rows = [r for r in rows if r["table"] == "assign"]
    if assign_rows:
        peaks = {r["dtype"]: round(r["peak_matmul_tflops"], 3) for r in assign_rows}
        print(f"\nSquare-matmul peak (TFLOP/s): {peaks}")
        print("| N | K | D | dtype | impl | ms | TFLOP/s | % matmul | % peak | × ref | temp MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in assign_rows:
            impl = r["implementation"] + (f" ({r['resolved']})" if r["implementation"] == "auto" else "")
            print(f"| {r['n']} | {r['k']} | {r['d']} | {r['dtype']} | {impl} | {_fmt(r['time_ms'], '.3f')} "
                  f"| {_fmt(r['tflops'], '.3f')} | {_fmt(r['pct_of_matmul'], '.0f')} "
                  f"| {_fmt(r['pct_of_peak_matmul'], '.0f')} | {_fmt(r['speedup_vs_reference'], '.2f')} "
                  f"| {_fmt(r['temp_mib'], '.1f')} |"
                  + (f" {r['error']}" if r["error"] else ""))
    residual_rows = [r for r in rows if r["table"] == "residual"]
    if residual_rows:
        print(f"\nFused residual (device copy bandwidth "
              f"{residual_rows[0]['device_bandwidth_gb_per_s']:.0f} GB/s)")
        print("| N | L | K | D | dtype | impl | ms | GB/s | % bandwidth | TFLOP/s | × ref | temp MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in residual_rows:
            impl = r["implementation"] + (f" ({r['resolved']})" if r["implementation"] == "auto" else "")
            print(f"| {r['n']} | {r['levels']} | {r['k']} | {r['d']} | {r['dtype']} | {impl} "
                  f"| {_fmt(r['time_ms'], '.3f')} | {_fmt(r['gb_per_s'], '.1f')} "
                  f"| {_fmt(r['pct_of_bandwidth'], '.0f')} | {_fmt(r['tflops'], '.3f')} "
                  f"| {_fmt(r['speedup_vs_reference'], '.2f')} | {_fmt(r['temp_mib'], '.1f')} |"
                  + (f" {r['error']}" if r["error"] else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="default: the preset named after jax.default_backend()")
    parser.add_argument("--implementations", default=None,
                        help="comma-separated subset (e.g. reference,chunked,pallas_gpu,auto)")
    parser.add_argument("--dtypes", default=None, help="comma-separated, e.g. bfloat16,float32")
    parser.add_argument("--metric", default="l2", choices=("l2", "cosine"))
    parser.add_argument("--reps", type=int, default=None, help="timed calls per entry (median)")
    parser.add_argument("--skip-residual", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--sweep", action="store_true",
                        help="instead: sweep the Pallas block configs at the target shapes")
    args = parser.parse_args(argv)
    if args.sweep:
        return sweep((args.dtypes or "bfloat16").split(",")[0], args.reps or 10)

    backend = jax.default_backend()
    preset = PRESETS[args.preset or backend]
    implementations = (args.implementations.split(",") if args.implementations
                       else preset["implementations"])
    dtypes = args.dtypes.split(",") if args.dtypes else preset["dtypes"]
    reps = args.reps or (20 if backend != "cpu" else 5)
    device = jax.devices()[0]
    header = dict(date=datetime.date.today().isoformat(), backend=backend,
                  device=getattr(device, "device_kind", str(device)), jax=jax.__version__,
                  host=platform.processor() or platform.machine(), reps=reps)
    print(header)
    rows = bench_assign(preset["assign"], dtypes, implementations, reps, args.metric)
    if not args.skip_residual:
        rows += bench_residual(preset["residual"], dtypes, implementations, reps)
    print_tables(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(header, rows=rows), f, indent=1)


if __name__ == "__main__":
    from u2qt.errors import cli_exit
    raise SystemExit(cli_exit(main))
