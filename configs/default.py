"""The default run: a U²QT user tokenizer on synthetic users with planted types.

Needs no download; trains in a few minutes on 2 CPU cores. Variants:
  configs/default.py:runlocal   a tiny run for smoke tests (seconds)
Every key and its default: u2qt/defaults.py (family user_tokenizer).
"""
from u2qt import config as config_lib
from u2qt import defaults


def get_config(arg=None):
    v = config_lib.variants(arg, "configs/default.py", flags=("runlocal",))
    c = defaults.user_tokenizer()
    if v["runlocal"]:
        c.data.synthetic_users = 400
        c.data.synthetic_items = 120
        c.model.dim = 32
        c.model.shared_dim = 32
        c.model.source_dim = 16
        c.model.seq_layers = 1
        c.model.qformer_layers = 1
        c.model.queries_per_source = 2
        c.quantizer.shared_codes = 16
        c.quantizer.source_codes = 16
        c.quantizer.kmeans_iters = 5
        c.quantizer.kmeans_at_step = 10
        c.data.max_events = 20
        c.train.batch_size = 64
        c.train.steps = 40
        c.train.log_every = 10
        c.train.eval_every = 20
        c.train.checkpoint_every = 20
        c.train.warmup_steps = 5
        c.quantizer.reset_every = 10
    return c


# Sweeps (python sweep.py --config configs/default.py --sweep lr,seed --dir sweeps/default; u2qt/sweep.py).
def sweep_lr():
    for lr in (1e-3, 2e-3, 4e-3):
        yield {"train.lr": lr}


def sweep_seed():
    for seed in (0, 1):
        yield {"seed": seed}


def sweep_beta():  # the weight of DAS's alignment term L_align
    for beta in (0.0, 0.25, 0.5, 1.0):
        yield {"loss.beta": beta}
