"""Train a u2qt model (tokenizer or recommender): python train.py [--config configs/NAME.py[:VARIANT]] [--workdir DIR] [--config.KEY=VALUE ...]
    [--coordinator_address HOST:PORT --num_processes N --process_id I | --distributed]

With no arguments it trains the default config (synthetic users with planted types) into runs/default.
Rerunning the same command resumes from the newest checkpoint in the workdir.
A bad config, bad data or an unusable workdir ends with one line `error: ...` and exit status 2.

Several processes (a TPU pod slice, GPU nodes, or processes on one machine) run the same command,
each with its coordinator settings (flags, U2QT_* variables, or --distributed to detect them from
the cluster; u2qt/train/distributed.py); the workdir must be storage all of them share.
"""
import os
import sys


def main(argv: list[str]) -> int:
    from u2qt import errors

    def train() -> None:
        from u2qt import config as config_lib
        from u2qt.train import distributed
        launch, args = distributed.launch_settings(argv)
        default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
        cfg, workdir = config_lib.parse_args(args, default_config=default)
        if launch is not None:  # before anything touches a device
            distributed.initialize(launch)
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
