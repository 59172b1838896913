"""Run a hyper-parameter sweep: python sweep.py --config configs/NAME.py[:VARIANT] [--sweep a,b] --dir DIR [--parallel N]

Each trial is `python train.py` with the trial's overrides in DIR/trials/<trial>; rerunning the
same command skips finished trials and resumes killed ones. `--report` only rewrites the results
table (DIR/results.md, .csv, .png). How to write sweeps in a config file: u2qt/sweep.py.

`--backend ray [--address auto|HOST:PORT]` runs the same trials on a Ray cluster through Ray Tune
(pip install ".[ray]"); DIR must be on storage every node mounts at the same path. Without
--address, a local Ray instance is started for the sweep.
"""
import argparse
import os
import sys


def main(argv: list[str]) -> int:
    from u2qt import errors

    def sweep() -> None:
        from u2qt import sweep as sweep_lib
        p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", required=True, help="configs/NAME.py[:VARIANT], which defines the sweeps")
        p.add_argument("--sweep", default="", help="comma-separated sweep names (sweep_<name>); default: sweep()")
        p.add_argument("--dir", required=True, help="the sweep's directory (trials, results)")
        p.add_argument("--parallel", type=int, default=None,
                       help="trials at a time (local: default 1; ray: default as many as the cluster's resources "
                            "allow)")
        p.add_argument("--report", action="store_true", help="only write the results table of the trials so far")
        p.add_argument("--metric", default=None, help="the summary number to rank by (dotted, e.g. test.NDCG@10)")
        p.add_argument("--lower-is-better", action="store_true")
        p.add_argument("--backend", default="local", choices=sweep_lib.BACKENDS,
                       help="where trials run: here (local) or on a Ray cluster through Ray Tune (ray)")
        p.add_argument("--address", default=None,
                       help="ray: the cluster (auto: the one this machine belongs to; HOST:PORT; ray://HOST:PORT); "
                            "default: a local Ray instance for this sweep")
        p.add_argument("--ray-cpus-per-trial", type=float, default=None,
                       help="ray: CPUs per trial (default: 1 on a cluster with GPUs, else a node's CPUs)")
        p.add_argument("--ray-gpus-per-trial", type=float, default=None,
                       help="ray: GPUs per trial (default: a node's GPUs)")
        args = p.parse_args(argv)
        names = [n.strip() for n in args.sweep.split(",") if n.strip()]
        if args.report:
            rows = sweep_lib.report(args.dir, args.config, args.metric, args.lower_is_better if args.metric else None)
        else:
            rows = sweep_lib.run_sweep(args.config, names, args.dir, args.parallel, backend=args.backend,
                                       address=args.address, cpus_per_trial=args.ray_cpus_per_trial,
                                       gpus_per_trial=args.ray_gpus_per_trial)
            if args.metric:
                rows = sweep_lib.report(args.dir, args.config, args.metric, args.lower_is_better)
        print(open(os.path.join(args.dir, "results.md")).read())

    return errors.cli_exit(sweep)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
