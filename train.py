"""Train a u2qt model (tokenizer or recommender): python train.py [--config configs/NAME.py[:VARIANT]] [--workdir DIR] [--config.KEY=VALUE ...]

With no arguments it trains the default config (synthetic users with planted types) into runs/default.
Rerunning the same command resumes from the newest checkpoint in the workdir.
A bad config, bad data or an unusable workdir ends with one line `error: ...` and exit status 2.
"""
import os
import sys


def main(argv: list[str]) -> int:
    from u2qt import errors

    def train() -> None:
        from u2qt import config as config_lib
        default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
        cfg, workdir = config_lib.parse_args(argv, default_config=default)
        import absl.logging
        from u2qt.train.loop import run
        from u2qt.train.workdir import enable_compilation_cache
        absl.logging.set_verbosity(absl.logging.ERROR)  # TFDS's notes on custom builder configs
        enable_compilation_cache()
        run(cfg, workdir or os.path.join("runs", "default"))

    return errors.cli_exit(train)


if __name__ == "__main__":
    from u2qt.progress import hide_xla_alarms
    hide_xla_alarms()  # XLA's "Very slow compile?" block becomes one plain line (U2QT_XLA_ALARMS=show: as is)
    sys.exit(main(sys.argv[1:]))
