"""Train a u2qt model (tokenizer or recommender): python train.py [--config configs/NAME.py[:VARIANT]] [--workdir DIR] [--config.KEY=VALUE ...]

With no arguments it trains the default config (synthetic users with planted types) into runs/default.
Rerunning the same command resumes from the newest checkpoint in the workdir.
"""
import os
import sys


def main(argv: list[str]) -> int:
    from u2qt import config as config_lib
    from u2qt.data.tables import DataError

    try:
        cfg, workdir = config_lib.parse_args(argv, default_config=os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"))
    except (config_lib.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    workdir = workdir or os.path.join("runs", "default")
    import absl.logging
    from u2qt.train.loop import run
    from u2qt.train.workdir import enable_compilation_cache
    absl.logging.set_verbosity(absl.logging.ERROR)  # TFDS's notes on custom builder configs
    enable_compilation_cache()
    try:
        run(cfg, workdir)
    except (config_lib.ConfigError, DataError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
