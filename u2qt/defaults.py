"""Every config key, with its default, by the family that reads it.

A config file (``configs/*.py``) starts from one family and changes what differs:

    common()          the train loop, the step, checkpoints (every task)
    user_tokenizer()  U²QT on users (task "user_tokenizer")
    item_tokenizer()  the DAS item tokenizer / plain RQ-VAE on item text (task "item_tokenizer")
    recommender()     SASRec with ID / semantic / unified items (task "recommender")
    generative_retrieval()  TIGER: decode the next item's semantic ID (task "generative_retrieval")
    efficientrec()    EfficientRec: users without ID rows, soft clusters that prune candidates (task "efficientrec")
    federated()       MRFF / FedAvg SASRec trained across clients by the federated trainer (task "federated")

A family holds only the keys its task reads, so an override of a key the run does not read is
refused as unknown. ``CONSTRAINTS`` and ``cross_key_problems`` (at the end) say what each value
must satisfy; ``u2qt.config.validate`` checks them before any data is read or anything compiles.
"""
from __future__ import annotations

import ml_collections


def common(task: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = task  # which task the loop runs (u2qt/tasks/core.py: TASKS)

    c.data = ml_collections.ConfigDict()
    c.data.cache_dir = ""  # text embeddings and example files; "" = <workdir>/cache
    # Training rows up to this size live on the devices and each step draws its batch there;
    # larger data stream through grain from array_record files (u2qt/train/batches.py).
    c.data.device_mb = 1024.0
    # Suspicious but usable data (ids that differ only by zero-padding, most events dropped, every
    # item text empty, extreme numeric values clipped) is a warning in the log and the summary;
    # True makes each such warning an error.
    c.data.strict = False

    # The device mesh is (data, model): batches split over "data"; the large tables (item
    # embeddings, full-softmax outputs, big codebooks) split over "model" (u2qt/train/sharding.py).
    # data = every device / model.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.model = 1

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128  # global, split over the mesh's data axis
    c.train.steps = 500
    # > 0: the run lasts this many passes over the training rows instead, and train.steps is
    # worked out once the data are read (u2qt/train/step.py: resolve_epochs, which also shortens
    # warm-up, k-means step and the log/eval/checkpoint intervals that would not fit, and logs it).
    c.train.epochs = 0.0
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
    # A workdir remembers a fingerprint of its data; resuming it on changed data is refused unless
    # this is True (then the checkpoint is fine-tuned on the new data, if the shapes still fit).
    c.train.finetune_changed_data = False
    return c


def short_schedule(c: ml_collections.ConfigDict) -> None:
    """The train schedule of the configs' ``runlocal`` variants: 6 steps of batch 64 that still
    log, evaluate and checkpoint (for tests and a first try)."""
    t = c.train
    t.batch_size, t.steps, t.warmup_steps = 64, 6, 2
    t.log_every, t.eval_every, t.checkpoint_every = 2, 3, 6


def _quantizer(c: ml_collections.ConfigDict) -> None:
    """The keys of every codebook stack: the quantizer and the loop's codebook upkeep."""
    q = c.quantizer = ml_collections.ConfigDict()
    q.commitment = 0.25  # β of the VQ commitment loss
    q.rotation_trick = False  # straight-through (False) or rotation-trick gradients
    q.entropy_weight = 0.0  # weight of the code-usage entropy guard L_H (0 = off)
    q.entropy_temperature = 0.1  # τ of L_H's soft assignment (relative to the mean distance)
    q.implementation = "auto"  # nearest-code kernel: auto | reference | chunked | pallas_gpu | pallas_tpu
    q.kmeans_init = True  # initialise every codebook stack by residual k-means on data
    q.kmeans_at_step = 150  # ... at this step: the encoders warm up unquantized before it
    q.kmeans_rows = 4096  # rows (users or items) encoded for the k-means initialisation
    q.kmeans_iters = 25
    q.health_rows = 1_000_000  # rows encoded for code health at each evaluation (the first ones; 0 = all)
    q.dead_code_fraction = 0.1  # a code is dead below this fraction of the mean usage
    q.usage_decay = 0.98  # EMA decay of per-step code counts
    q.reset_every = 50  # steps between dead-code resets (0 = never)
    q.reset_until = 0.8  # no resets in the last 20% of training, so codes settle


def user_tokenizer() -> ml_collections.ConfigDict:
    c = common("user_tokenizer")
    d = c.data
    d.format = "synthetic"  # synthetic | tables (a directory of users/items/events) | movielens
    d.path = ""  # the data directory for format=tables or movielens
    d.encoding = "utf-8"  # of the CSV files of format=tables (e.g. latin-1, cp1252)
    d.synthetic_users = 3000
    d.synthetic_items = 400
    d.synthetic_types = 8
    d.max_events = 32  # the last N input events of each user
    d.holdout = 5  # latest events held out per user for future-behaviour evaluation
    d.min_input = 5  # hold out only for users who keep at least this many input events
    d.exclude_user_columns = ()  # attributes the tokenizer must not see (e.g. a downstream target)
    # > 0: build the examples chunk by chunk (this many users each) into array_record files under
    # data.cache_dir and read them lazily: data larger than memory (u2qt/data/stream.py). 0 = in memory.
    d.stream_chunk_users = 0

    m = c.model = ml_collections.ConfigDict()
    m.sources = ("tabular", "behaviour", "text")  # the Q-Former's causal order
    m.dim = 64
    m.num_heads = 4
    m.seq_layers = 2
    m.qformer_layers = 2
    m.queries_per_source = 4
    m.shared_dim = 64
    m.source_dim = 32
    m.dropout = 0.1
    m.view_dropout = 0.5  # share of rows whose decoders see only the shared tokens

    _quantizer(c)
    c.quantizer.shared_levels = 3
    c.quantizer.shared_codes = 64
    c.quantizer.source_levels = 2  # each source-specific stack
    c.quantizer.source_codes = 64

    lo = c.loss = ml_collections.ConfigDict()
    lo.alpha = 1.0  # weight of L_cf
    lo.beta = 0.5  # weight of L_align (DAS)
    lo.w_u2i = 1.0
    lo.w_u2u = 1.0
    lo.w_cooc = 0.5
    lo.temperature = 0.1
    lo.cooc_buckets = 2048
    lo.recon_weight = 1.0
    lo.cf_max_targets = 3  # the last 1..3 input events of a view become its next-item targets
    lo.cf_num_sampled = 0  # 0 = full softmax over items; >0 = sampled softmax
    lo.item_dropout = 0.1
    return c


def _lcrec_data(c: ml_collections.ConfigDict) -> None:
    """The item side of a data set in the LC-Rec layout (NAME.inter.json + NAME.item.json)."""
    c.data.path = ""
    c.data.max_description_chars = 2000  # item text: the description is cut here (LC-Rec reader)
    c.data.max_history = 20  # the protocol's history length (inputs of training sequences too)
    c.data.text_norm = "standardize"  # item text embeddings: standardize | l2 | none


def item_tokenizer() -> ml_collections.ConfigDict:
    c = common("item_tokenizer")
    _lcrec_data(c)
    m = c.model = ml_collections.ConfigDict()
    m.mlp_hidden = (512, 256)  # text → latent MLP (decoder mirrored)
    m.latent_dim = 32  # TIGER: 32
    m.dim = 64  # the jointly trained SASRec user encoder (u2i alignment)
    m.num_heads = 2
    m.seq_layers = 2
    m.dropout = 0.3

    _quantizer(c)
    c.quantizer.item_levels = 3
    c.quantizer.item_codes = 256
    # Colliding items take the nearest free last-level code of their prefix (LC-Rec); the report
    # keeps the nearest-code collision rate too. False: nearest codes only.
    c.quantizer.collision_free_last_level = True

    lo = c.loss = ml_collections.ConfigDict()
    lo.recon_weight = 1.0
    lo.beta = 0.1  # weight of L_align (DAS)
    lo.w_u2i = 1.0
    lo.w_cooc = 1.0
    lo.temperature = 0.1
    return c


def recommender() -> ml_collections.ConfigDict:
    c = common("recommender")
    _lcrec_data(c)
    c.data.cold_fraction = 0.0  # cold start: a seeded share of the items removed from training
    c.data.cold_seed = 0

    m = c.model = ml_collections.ConfigDict()
    m.item_repr = "unified"  # id | semantic | unified
    m.codes_path = ""  # "" = codes learned end to end; else a semantic-ID table (parquet, or LETTER json)
    m.use_dedup_token = True  # fixed codes: append the de-dup token as one more code
    m.mlp_hidden = (512, 256)  # learned codes: text → item vector MLP (decoder mirrored)
    m.dim = 64
    m.num_heads = 2
    m.seq_layers = 2
    m.dropout = 0.3

    _quantizer(c)  # learned codes only
    c.quantizer.item_levels = 3
    c.quantizer.item_codes = 256

    lo = c.loss = ml_collections.ConfigDict()
    lo.quant_weight = 1.0
    lo.recon_weight = 1.0
    lo.recon_items = 2048  # text reconstruction estimated on this many items per step (0: all)

    c.train.target_capacity = -1  # score the positions with a target only, room sized from the data (0: all)
    c.train.select_metric = "valid_NDCG@10"

    e = c.eval = ml_collections.ConfigDict()
    e.batch_size = 512
    e.popularity_buckets = 3
    e.top_k = 10  # what the serving function returns
    return c


def generative_retrieval() -> ml_collections.ConfigDict:
    """TIGER (Rajput et al. 2023) with its sizes: 4 + 4 layers, 6 heads × 64, MLP 1024, d 128."""
    c = common("generative_retrieval")
    _lcrec_data(c)
    c.data.cold_fraction = 0.0
    c.data.cold_seed = 0

    m = c.model = ml_collections.ConfigDict()
    # The item IDs: a semantic_ids.parquet, a LETTER/GRID .json index, or "random" (same shape
    # as model.random_levels, plus the de-dup token).
    m.codes_path = ""
    m.random_levels = (256, 256, 256)
    m.user_buckets = 2000  # TIGER's hashed user token
    m.dim = 128
    m.num_heads = 6
    m.head_dim = 64
    m.mlp_dim = 1024
    m.encoder_layers = 4
    m.decoder_layers = 4
    m.dropout = 0.1
    m.dtype = "float32"  # compute dtype: float32 | bfloat16 (accelerators); parameters stay float32

    c.train.batch_size = 256
    c.train.lr = 1e-3
    c.train.select_metric = "valid_NDCG@10"

    e = c.eval = ml_collections.ConfigDict()
    e.batch_size = 256
    e.beam = 20  # beams decoded per case (the ranked list's length)
    e.popularity_buckets = 3
    e.invalid_rate_cases = 2000  # test cases decoded unconstrained for the invalid-ID rate
    # Evaluation decodes cases sorted by history length, each batch with its histories cut to the
    # shortest of these lengths (in items) that holds them: the same ranks as the full window for
    # less work (most histories are short). () = always the full window.
    e.length_buckets = (5, 10, 20)
    return c


def efficientrec() -> ml_collections.ConfigDict:
    """EfficientRec (Quan et al. 2024): a user is a function of their interactions over a LightGCN
    item encoder, with contrastive views and soft clusters that prune the ranked items."""
    c = common("efficientrec")
    d = c.data
    d.reader = "lcrec"  # lcrec (NAME.inter.json + NAME.item.json) | movielens (the GroupLens files)
    d.path = ""
    d.max_description_chars = 2000  # the LC-Rec reader's (item text is not used)
    d.max_history = 20  # interactions a user is encoded from (the protocol's history length)
    d.train_window = 64  # latest training interactions per training row; each step draws its targets among them
    d.unseen_fraction = 0.1  # evaluated users held out of training entirely (reported separately)
    d.unseen_seed = 0

    m = c.model = ml_collections.ConfigDict()
    m.dim = 64
    m.graph_layers = 2  # LightGCN layers K (0: the item embeddings unpropagated)
    m.head_hidden = (128,)  # the user head u = x + MLP(x): its hidden widths
    m.clusters = 32
    m.membership = "sigmoid"  # sigmoid | softmax
    m.user_table = False  # the baseline: a learned row per user (propagated) instead of the ID-free encoder

    lo = c.loss = ml_collections.ConfigDict()
    lo.temperature = 0.2  # of both InfoNCE terms
    lo.view_weight = 0.1  # InfoNCE between two augmented views of a user's interactions
    lo.view_dropout = 0.2  # each view drops each interaction with this probability ...
    lo.view_crop = 0.8  # ... and keeps a random contiguous crop of this share of them
    lo.u2i_weight = 0.1  # InfoNCE between a user and their next item
    lo.targets_per_row = 8  # next-item targets drawn per training row and step (each with its own history)
    lo.cluster_weight = 0.1  # the cluster term (user and next item in the same cluster)
    lo.balance_weight = 1.0  # its guard against one cluster taking every user

    c.train.batch_size = 256
    c.train.lr = 1e-3
    c.train.weight_decay = 0.0
    c.train.select_metric = "valid_NDCG@10"

    e = c.eval = ml_collections.ConfigDict()
    e.batch_size = 512
    e.popularity_buckets = 3
    e.top_clusters = 3  # pruned ranking: a user scores the shortlists of this many clusters
    e.shortlist_sizes = (50, 100, 200, 400)  # items per cluster shortlist, one pruned row each
    # What a cluster's shortlist ranks items by (u2qt/models/efficientrec.py): "model", the top
    # eval.shortlist_depth items of each training user's own full ranking, weighted by rank and
    # membership, for the eval.top_clusters clusters that serve the user; "interactions", the
    # paper's membership-weighted training interactions.
    e.shortlist_from = "model"
    e.shortlist_depth = 100
    return c


def federated() -> ml_collections.ConfigDict:
    """Federated sequential recommendation (MRFF, arXiv 2412.16969): the federated trainer
    (u2qt/train/federated.py) around the one train step. Without the ``federated`` family (a
    config that deletes it) the same task trains centrally in the ordinary loop (variant sasrec)."""
    c = common("federated")
    d = c.data
    d.reader = "lcrec"  # lcrec (NAME.inter.json + NAME.item.json) | movielens (the GroupLens files)
    d.path = ""
    d.max_description_chars = 2000  # the LC-Rec reader's (item text is not used)
    d.max_history = 20  # the protocol's history length (inputs of training rows too)
    d.windows = 1  # training rows per user: its last max_history steps; n > 1: up to its last n windows; 0: all

    m = c.model = ml_collections.ConfigDict()
    m.variant = "mrff"  # mrff (group experts + private user expert) | sasrec (every parameter shared)
    m.dim = 64
    m.num_heads = 2
    m.seq_layers = 2
    m.dropout = 0.2
    m.experts = 4  # K group experts, each a feed-forward of width 4 · dim
    m.private_hidden = 16  # width of each block's private user expert (kept per client: memory × clients)
    m.gate_hidden = 32  # the gating MLP u → K route logits
    m.expert_start = "copies"  # the K group experts start as copies of one draw | independent draws
    m.route_on = "user"  # what the gate reads: the private user embedding u (the paper) | history (the
    #                      mean embedding of the client's own items; no user embedding)
    m.expert_base = "none"  # the group experts alone (the paper) | shared (a shared feed-forward that
    #                         every client trains, the group experts zero-started deltas over it)

    lo = c.loss = ml_collections.ConfigDict()
    lo.balance_weight = 0.01  # α of the balance loss α · K · Σ_k f_k · p_k

    fe = c.federated = ml_collections.ConfigDict()
    fe.rounds = 100
    fe.client_fraction = 0.1  # share of the clients with data sampled each round
    fe.local_steps = 2  # train steps each sampled client runs per round
    fe.local_batch = 8  # rows per local step (a client with fewer uses all of its rows)
    fe.clients_per_chunk = 128  # clients trained at once under vmap (a round scans over chunks of this many)
    fe.grouping = "user"  # user (a client per user) | random (groups of group_size) | attribute
    fe.group_size = 10  # grouping=random
    fe.group_attribute = "gender"  # grouping=attribute: the user attribute (MovieLens-1M only)
    # The private experts' local step relative to the shared parameters' (θ_p ← θ_p + s·(θ_p' − θ_p)
    # after the local steps). A client's private leaves see only its own rows, every time it is
    # sampled; at s = 1 they fit those rows (see README, federated results).
    fe.private_lr_scale = 1.0
    # The same for the private user embedding u alone (the gate's input: it decides the client's
    # route); private_lr_scale then scales only the private experts.
    fe.user_embedding_lr_scale = 1.0
    fe.dp_clip = 0.0  # DP-FedAvg: L2 clip of each client's update (0 = off)
    fe.dp_noise = 0.0  # DP-FedAvg: Gaussian noise multiplier z (std z · clip · max weight / Σ weights)
    # The server optimizer on the pseudo-gradient -Δ (Δ: the round's mean client update; Reddi et al.
    # 2021): sgd (before + server_lr · Δ; server_lr 1 = FedAvg) | momentum (FedAvgM) | adam (FedAdam)
    # | yogi (FedYogi). It steps the parameters; the averaged client moments stay plain means.
    fe.server_optimizer = "sgd"
    fe.server_lr = 1.0
    fe.server_momentum = 0.9  # β1 of momentum, adam and yogi (sgd has none)
    fe.server_b2 = 0.99  # β2 of adam and yogi
    fe.server_tau = 1e-3  # ε of adam and yogi: the adaptivity τ (small τ: more adaptive)
    # constant | cosine: server_lr warmed up linearly over server_warmup_rounds, then cosine decay to
    # 5% of it at the last round (the train schedule's shape, in rounds).
    fe.server_schedule = "constant"
    fe.server_warmup_rounds = 0
    # The group experts' server step relative to the shared leaves' (the server lr and schedule
    # times this). Each expert is averaged over only its routed share of the round's clients, so
    # its mean update is noisier, and an adaptive server optimizer steps it as far as the rest.
    fe.group_lr_scale = 1.0
    # The clients' local optimizer: adamw (the train step's AdamW at train.lr with its warm-up and
    # cosine schedule; the shared moments averaged like the parameters) | sgd (clip_norm, then plain
    # SGD at a constant train.lr: no moments, no weight decay; the schedule and the adaptivity are
    # the server's: server_optimizer=adam with server_schedule=cosine is FedAdam of Reddi et al.).
    fe.client_optimizer = "adamw"

    c.train.lr = 1e-3
    c.train.warmup_steps = 20
    c.train.log_every = 10  # rounds, as eval_every, checkpoint_every and halt_after_step
    c.train.eval_every = 50
    c.train.checkpoint_every = 50

    e = c.eval = ml_collections.ConfigDict()
    e.batch_size = 512
    e.popularity_buckets = 3
    # MRFF ranks a user with its client's private experts (on: the paper) or with them zeroed (off:
    # they still train, taking up what fits the client's own items, and the ranking uses what the
    # shared and group parts learnt). Every report also has the other setting's metrics to choose by.
    e.private_experts = "on"
    return c


# ----------------------------------------------------------------------------- constraints
# What a value must satisfy, by key (checked with ``u2qt.config.validate`` before any data is read
# or anything compiles; a key the config does not hold is skipped). (test, what it must be).
_INT_AT_LEAST_1 = (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
_PROBABILITY = (lambda v: 0.0 <= v < 1.0, "in [0, 1)")
_AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
_INT_AT_LEAST_0 = (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")


def _one_of(*values):
    return (lambda v: v in values, "one of " + ", ".join(map(repr, values)))


def _some_of(*values):
    return (lambda v: len(v) >= 1 and len(set(v)) == len(v) and set(v) <= set(values),
            "a non-empty list without repeats of " + ", ".join(map(repr, values)))


# The choices of the modules that read these keys (tests/test_config.py checks they agree).
TASKS = ("user_tokenizer", "item_tokenizer", "recommender", "generative_retrieval", "efficientrec", "federated")
DATA_FORMATS = ("synthetic", "tables", "movielens")
SOURCES = ("tabular", "behaviour", "text")
TEXT_NORMS = ("standardize", "l2", "none")
ITEM_REPRS = ("id", "semantic", "unified")
READERS = ("lcrec", "movielens")
MEMBERSHIPS = ("sigmoid", "softmax")
FEDERATED_VARIANTS = ("mrff", "sasrec")
GROUPINGS = ("user", "random", "attribute")
SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "yogi")
CLIENT_OPTIMIZERS = ("adamw", "sgd")
IMPLEMENTATIONS = ("auto", "reference", "chunked", "pallas_gpu", "pallas_tpu",
                   "pallas_gpu_interpret", "pallas_tpu_interpret")

CONSTRAINTS = {
    "task": _one_of(*TASKS),
    "data.format": _one_of(*DATA_FORMATS),
    "data.text_norm": _one_of(*TEXT_NORMS),
    "data.holdout": _AT_LEAST_0,
    "data.min_input": _INT_AT_LEAST_1,
    "data.synthetic_users": _INT_AT_LEAST_1,
    "data.synthetic_items": _INT_AT_LEAST_1,
    "data.synthetic_types": _INT_AT_LEAST_1,
    "data.stream_chunk_users": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (0 = in memory)"),
    "data.max_description_chars": _INT_AT_LEAST_1,
    "data.cold_fraction": _PROBABILITY,
    "model.sources": _some_of(*SOURCES),
    "model.item_repr": _one_of(*ITEM_REPRS),
    "model.seq_layers": _INT_AT_LEAST_1,
    "model.qformer_layers": _INT_AT_LEAST_1,
    "model.queries_per_source": _INT_AT_LEAST_1,
    "model.shared_dim": _INT_AT_LEAST_1,
    "model.source_dim": _INT_AT_LEAST_1,
    "model.latent_dim": _INT_AT_LEAST_1,
    "model.mlp_hidden": (lambda v: all(isinstance(h, int) and h >= 1 for h in v), "integers >= 1"),
    "quantizer.implementation": _one_of(*IMPLEMENTATIONS),
    "quantizer.commitment": _AT_LEAST_0,
    "quantizer.entropy_weight": _AT_LEAST_0,
    "quantizer.entropy_temperature": (lambda v: v > 0, "> 0"),
    "quantizer.kmeans_rows": _INT_AT_LEAST_1,
    "quantizer.health_rows": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "quantizer.dead_code_fraction": _PROBABILITY,
    "quantizer.reset_every": _AT_LEAST_0,
    "quantizer.reset_until": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "loss.alpha": _AT_LEAST_0,
    "loss.beta": _AT_LEAST_0,
    "loss.w_u2i": _AT_LEAST_0,
    "loss.w_u2u": _AT_LEAST_0,
    "loss.w_cooc": _AT_LEAST_0,
    "loss.recon_weight": _AT_LEAST_0,
    "loss.quant_weight": _AT_LEAST_0,
    "loss.cooc_buckets": _INT_AT_LEAST_1,
    "loss.cf_max_targets": _INT_AT_LEAST_1,
    "loss.cf_num_sampled": _AT_LEAST_0,
    "loss.item_dropout": _PROBABILITY,
    "loss.recon_items": _AT_LEAST_0,
    "eval.batch_size": _INT_AT_LEAST_1,
    "eval.popularity_buckets": _INT_AT_LEAST_1,
    "eval.private_experts": _one_of("on", "off"),
    "eval.top_k": _INT_AT_LEAST_1,
    "eval.beam": _INT_AT_LEAST_1,
    "eval.invalid_rate_cases": _AT_LEAST_0,
    "model.user_buckets": _INT_AT_LEAST_1,
    "model.dtype": _one_of("float32", "bfloat16"),
    "eval.length_buckets": (lambda v: all(isinstance(k, int) and k >= 1 for k in v) and list(v) == sorted(set(v)),
                            "ascending integers >= 1 (or empty)"),
    "model.head_dim": _INT_AT_LEAST_1,
    "model.mlp_dim": _INT_AT_LEAST_1,
    "model.encoder_layers": _INT_AT_LEAST_1,
    "model.decoder_layers": _INT_AT_LEAST_1,
    "model.random_levels": (lambda v: len(v) >= 1 and all(isinstance(k, int) and k >= 2 for k in v),
                            "a non-empty list of integers >= 2"),
    "mesh.model": _INT_AT_LEAST_1,
    "train.steps": _INT_AT_LEAST_1,
    "train.epochs": (lambda v: v >= 0, ">= 0 (0 = train.steps decides)"),
    "train.batch_size": _INT_AT_LEAST_1,
    "train.log_every": _INT_AT_LEAST_1,
    "train.eval_every": _INT_AT_LEAST_1,
    "train.checkpoint_every": _INT_AT_LEAST_1,
    # 0 would let Orbax delete every checkpoint, the newest too.
    "train.keep_checkpoints": _INT_AT_LEAST_1,
    "train.lr": (lambda v: v > 0, "> 0"),
    "train.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "train.clip_norm": (lambda v: v > 0, "> 0"),
    "train.weight_decay": (lambda v: v >= 0, ">= 0"),
    "train.halt_after_step": (lambda v: v >= 0, ">= 0 (0 = never)"),
    "data.device_mb": (lambda v: v >= 0, ">= 0"),
    "data.max_events": _INT_AT_LEAST_1,
    "data.max_history": _INT_AT_LEAST_1,
    "data.windows": _INT_AT_LEAST_0,
    "model.dim": _INT_AT_LEAST_1,
    "model.num_heads": _INT_AT_LEAST_1,
    "model.dropout": _PROBABILITY,
    "model.view_dropout": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "quantizer.shared_levels": _INT_AT_LEAST_1,
    "quantizer.source_levels": _INT_AT_LEAST_1,
    "quantizer.item_levels": _INT_AT_LEAST_1,
    "quantizer.shared_codes": (lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
    "quantizer.source_codes": (lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
    "quantizer.item_codes": (lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
    "quantizer.kmeans_at_step": (lambda v: v >= 0, ">= 0"),
    "quantizer.kmeans_iters": _INT_AT_LEAST_1,
    "quantizer.usage_decay": _PROBABILITY,
    "loss.temperature": (lambda v: v > 0, "> 0"),
    "data.reader": _one_of(*READERS),
    "data.train_window": (lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
    "data.unseen_fraction": _PROBABILITY,
    "model.graph_layers": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "model.head_hidden": (lambda v: all(isinstance(h, int) and h >= 1 for h in v), "integers >= 1"),
    "model.clusters": _INT_AT_LEAST_1,
    "model.membership": _one_of(*MEMBERSHIPS),
    "loss.view_weight": _AT_LEAST_0,
    "loss.view_dropout": _PROBABILITY,
    "loss.view_crop": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "loss.u2i_weight": _AT_LEAST_0,
    "loss.targets_per_row": _INT_AT_LEAST_1,
    "loss.cluster_weight": _AT_LEAST_0,
    "loss.balance_weight": _AT_LEAST_0,
    "eval.top_clusters": _INT_AT_LEAST_1,
    "eval.shortlist_from": _one_of("model", "interactions"),
    "eval.shortlist_depth": _INT_AT_LEAST_1,
    "eval.shortlist_sizes": (lambda v: len(v) >= 1 and all(isinstance(k, int) and k >= 1 for k in v),
                             "a non-empty list of integers >= 1"),
    "model.variant": _one_of(*FEDERATED_VARIANTS),
    "model.experts": _INT_AT_LEAST_1,
    "model.private_hidden": _INT_AT_LEAST_1,
    "model.gate_hidden": _INT_AT_LEAST_1,
    "model.expert_start": _one_of("copies", "independent"),
    "model.route_on": _one_of("user", "history"),
    "model.expert_base": _one_of("none", "shared"),
    "federated.rounds": _INT_AT_LEAST_1,
    "federated.client_fraction": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "federated.local_steps": _INT_AT_LEAST_1,
    "federated.local_batch": _INT_AT_LEAST_1,
    "federated.clients_per_chunk": _INT_AT_LEAST_1,
    "federated.grouping": _one_of(*GROUPINGS),
    "federated.group_size": _INT_AT_LEAST_1,
    "federated.dp_clip": _AT_LEAST_0,
    "federated.private_lr_scale": _AT_LEAST_0,
    "federated.user_embedding_lr_scale": _AT_LEAST_0,
    "federated.dp_noise": _AT_LEAST_0,
    "federated.server_optimizer": _one_of(*SERVER_OPTIMIZERS),
    "federated.server_lr": (lambda v: v > 0, "> 0"),
    "federated.server_momentum": _PROBABILITY,
    "federated.server_b2": _PROBABILITY,
    "federated.server_tau": (lambda v: v > 0, "> 0"),
    "federated.server_schedule": _one_of("constant", "cosine"),
    "federated.server_warmup_rounds": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "federated.group_lr_scale": (lambda v: v > 0, "> 0"),
    "federated.client_optimizer": _one_of(*CLIENT_OPTIMIZERS),
}


def cross_key_problems(c: ml_collections.ConfigDict) -> list[str]:
    """Rules between keys; each problem is one sentence naming the keys."""
    problems = []
    q, m, t = c.get("quantizer"), c.get("model"), c.train
    if q is not None and q.get("kmeans_init") and not t.epochs and q.kmeans_at_step >= t.steps:
        problems.append(f"quantizer.kmeans_at_step={q.kmeans_at_step} must be < train.steps={t.steps}: the "
                        f"codebooks would be exported untrained (or set quantizer.kmeans_init=False)")
    if m is not None and "item_repr" in m and q is not None and q.get("kmeans_init") and (
            m.item_repr == "id" or m.get("codes_path")):
        problems.append(f"quantizer.kmeans_init must be False for model.item_repr={m.item_repr!r}"
                        f"{' with model.codes_path' if m.get('codes_path') else ''}: there is no codebook stack to "
                        f"initialise")
    d = c.get("data")
    if d is not None and "path" in d and not d.path and d.get("format", "lcrec") != "synthetic":
        layout = (f"data.format={d.format!r}" if "format" in d else f"data.reader={d.reader!r}" if "reader" in d
                  else "the LC-Rec layout")
        problems.append(f"data.path is empty: {layout}"
                        f" needs the data directory (--config.data.path=DIR)")
    if m is not None and "num_heads" in m and "head_dim" not in m:  # head_dim given: heads × head_dim is free
        for width in ("dim",):
            if width in m and m[width] % max(m.num_heads, 1):
                problems.append(f"model.{width}={m[width]} must be a multiple of model.num_heads={m.num_heads}")
    e = c.get("eval")
    if e is not None and "top_clusters" in e and e.top_clusters > m.clusters:
        problems.append(f"eval.top_clusters={e.top_clusters} must be <= model.clusters={m.clusters}")
    if e is not None and e.get("length_buckets") and e.length_buckets[-1] != c.data.max_history:
        problems.append(f"eval.length_buckets={tuple(e.length_buckets)} must end with data.max_history="
                        f"{c.data.max_history}, so every history fits one")
    fe = c.get("federated")
    if fe is not None and fe.dp_noise > 0 and fe.dp_clip <= 0:
        problems.append(f"federated.dp_noise={fe.dp_noise} needs federated.dp_clip > 0: the noise is scaled to the "
                        f"clipped updates' sensitivity")
    return problems
