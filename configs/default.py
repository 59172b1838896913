"""The default run: a U²QT user tokenizer on synthetic users with planted types.

Needs no download; trains in a few minutes on 2 CPU cores. Variants:
  configs/default.py:runlocal   a tiny run for smoke tests (seconds)
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "u2qt_users"  # which Task the train loop runs (u2qt/train/task.py)

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # synthetic | tables (a directory of users/items/events) | movielens
    c.data.path = ""  # the data directory for source=tables or movielens
    c.data.synthetic_users = 3000
    c.data.synthetic_items = 400
    c.data.synthetic_types = 8
    c.data.max_events = 32  # the last N input events of each user
    c.data.holdout = 5  # latest events held out per user for future-behaviour evaluation
    c.data.min_input = 5  # hold out only for users who keep at least this many input events
    c.data.exclude_user_columns = ()  # attributes the tokenizer must not see (e.g. a downstream target)
    c.data.cache_dir = ""  # text embeddings and TFDS files; "" = <workdir>/cache

    c.model = ml_collections.ConfigDict()
    c.model.sources = ("tabular", "behaviour", "text")  # the Q-Former's causal order
    c.model.dim = 64
    c.model.num_heads = 4
    c.model.seq_layers = 2
    c.model.qformer_layers = 2
    c.model.queries_per_source = 4
    c.model.shared_dim = 64
    c.model.source_dim = 32
    c.model.dropout = 0.1
    c.model.view_dropout = 0.5  # share of rows whose decoders see only the shared tokens

    c.quantizer = ml_collections.ConfigDict()
    c.quantizer.shared_levels = 3
    c.quantizer.shared_codes = 64
    c.quantizer.source_levels = 2
    c.quantizer.source_codes = 64
    c.quantizer.commitment = 0.25  # β of the VQ commitment loss
    c.quantizer.rotation_trick = False  # straight-through (False) or rotation-trick gradients
    c.quantizer.entropy_weight = 0.0  # weight of the code-usage entropy guard L_H (0 = off)
    c.quantizer.entropy_temperature = 0.1  # τ of L_H's soft assignment (relative to the mean distance)
    c.quantizer.implementation = "auto"  # nearest-code kernel: auto | reference | chunked | pallas_gpu | pallas_tpu
    c.quantizer.kmeans_init = True  # initialise every codebook stack by residual k-means on data
    c.quantizer.kmeans_at_step = 150  # ... at this step: the encoders warm up unquantized before it
    c.quantizer.kmeans_users = 4096  # users encoded for the k-means initialisation
    c.quantizer.kmeans_iters = 25
    c.quantizer.dead_code_fraction = 0.1  # a code is dead below this fraction of the mean usage
    c.quantizer.usage_decay = 0.98  # EMA decay of per-step code counts
    c.quantizer.reset_every = 50  # steps between dead-code resets (0 = never)
    c.quantizer.reset_until = 0.8  # no resets in the last 20% of training, so codes settle

    c.loss = ml_collections.ConfigDict()
    c.loss.alpha = 1.0  # weight of L_cf
    c.loss.beta = 0.5  # weight of L_align (DAS)
    c.loss.w_u2i = 1.0
    c.loss.w_u2u = 1.0
    c.loss.w_cooc = 0.5
    c.loss.temperature = 0.1
    c.loss.cooc_buckets = 2048
    c.loss.recon_weight = 1.0
    c.loss.cf_max_targets = 3  # the last 1..3 input events of a view become its next-item targets
    c.loss.cf_num_sampled = 0  # 0 = full softmax over items; >0 = sampled softmax
    c.loss.item_dropout = 0.1

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128  # global, split over the mesh's data axis
    c.train.steps = 500
    c.train.lr = 2e-3
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.01
    c.train.clip_norm = 1.0
    c.train.log_every = 50
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 2
    c.train.select_metric = ""  # an eval metric to keep the best parameters by ("" = the last ones)
    c.train.halt_after_step = 0  # >0: stop after this step as if the run were killed (resume tests)
    c.train.progress = True
    return c


def get_config(arg=None):
    c = base_config()
    if arg == "runlocal":
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
    elif arg:
        raise ValueError(f"configs/default.py: unknown variant {arg!r} (known: runlocal)")
    return c
