"""U²QT user tokenizer on MovieLens-1M (original files; pass the directory as data.path).

  python train.py --config configs/movielens.py --workdir runs/ml1m \
      --config.data.path=../shared/data/movielens-1m
Variants: `:nogender` trains a tokenizer that never sees gender (for the gender downstream task);
`:runlocal` a few steps, for tests. Every key: u2qt/defaults.py (family user_tokenizer).
"""
from u2qt import config as config_lib
from u2qt import defaults


def get_config(arg=None):
    v = config_lib.variants(arg, "configs/movielens.py", flags=("nogender", "runlocal"))
    c = defaults.user_tokenizer()
    c.data.format = "movielens"
    c.data.path = "../shared/data/movielens-1m"
    c.data.max_events = 32
    c.data.holdout = 10
    c.data.min_input = 10
    # 5 shared levels: half the users have no ratings and differ only in their attributes (zip
    # above all, an offset the size of the nearest-neighbour distance), so the shared tokens need
    # the resolution to tell them apart. Each level cut the collision rate ~2.5x in the 4-level run
    # (100% → 56% → 24% → 8.1%); 11 bytes per user is still 58x less than the float vectors.
    c.quantizer.shared_levels = 5
    c.quantizer.shared_codes = 256
    c.quantizer.source_codes = 256
    c.train.batch_size = 128
    c.train.steps = 800
    c.quantizer.kmeans_at_step = 150
    c.quantizer.kmeans_rows = 8192  # all of MovieLens-1M's 6,040 users
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    if v["nogender"]:
        c.data.exclude_user_columns = ("gender",)
    if v["runlocal"]:
        c.train.steps = 6
        c.train.batch_size = 64
        c.train.log_every = 2
        c.train.eval_every = 6
        c.train.checkpoint_every = 6
        c.quantizer.kmeans_rows = 512
        c.quantizer.kmeans_iters = 3
        c.quantizer.kmeans_at_step = 2
        c.quantizer.shared_codes = 32
        c.quantizer.source_codes = 32
    return c
