"""Run a hyper-parameter sweep: python sweep.py --config configs/NAME.py[:VARIANT] [--sweep a,b] --dir DIR [--parallel N]

Each trial is `python train.py` with the trial's overrides in DIR/trials/<trial>; rerunning the
same command skips finished trials and resumes killed ones. `--report` only rewrites the results
table (DIR/results.md, .csv, .png). How to write sweeps in a config file: u2qt/sweep.py.
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
        p.add_argument("--parallel", type=int, default=1, help="trials at a time")
        p.add_argument("--report", action="store_true", help="only write the results table of the trials so far")
        p.add_argument("--metric", default=None, help="the summary number to rank by (dotted, e.g. test.NDCG@10)")
        p.add_argument("--lower-is-better", action="store_true")
        args = p.parse_args(argv)
        names = [n.strip() for n in args.sweep.split(",") if n.strip()]
        if args.report:
            rows = sweep_lib.report(args.dir, args.config, args.metric, args.lower_is_better if args.metric else None)
        else:
            rows = sweep_lib.run_sweep(args.config, names, args.dir, args.parallel)
            if args.metric:
                rows = sweep_lib.report(args.dir, args.config, args.metric, args.lower_is_better)
        print(open(os.path.join(args.dir, "results.md")).read())

    return errors.cli_exit(sweep)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
