"""Item semantic IDs and the unified ID + semantic recommender on Amazon 2014 (LC-Rec layout).

  python train.py --config configs/amazon.py:beauty,items    --workdir runs/beauty_items
  python train.py --config configs/amazon.py:beauty,id       --workdir runs/beauty_id
  python train.py --config configs/amazon.py:beauty,semantic --workdir runs/beauty_semantic
  python train.py --config configs/amazon.py:beauty,unified  --workdir runs/beauty_unified
  python train.py --config configs/amazon.py:beauty,unified,coldstart --workdir runs/beauty_unified_cold
Variants, comma-separated:
  beauty | office      the data set (data.path = ../shared/data/amazon-<name>-2014)
  items                the DAS item tokenizer (task das_items): item → 3 codes × 256 + de-dup token
  id | semantic | unified   the recommender (task recommender) with that item representation;
                       semantic and unified learn their codes end to end (Lin et al.) unless
                       --config.model.codes_path=<tokenizer run>/item_codes.parquet gives fixed ones
  coldstart            remove a seeded random 5% of the items from all training sequences
  runlocal             a few steps on small models, for tests
Text embeddings and TFDS files are cached in data.cache_dir (shared by all variants).
Recommender runs keep the parameters with the best validation NDCG@10 and report test metrics.
"""
import importlib.util
import os

import ml_collections

_spec = importlib.util.spec_from_file_location("u2qt_configs_default", os.path.join(os.path.dirname(__file__), "default.py"))
_default = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_default)
base_config = _default.base_config

DATASETS = {"beauty": "../shared/data/amazon-beauty-2014", "office": "../shared/data/amazon-office-2014"}
KINDS = ("items", "id", "semantic", "unified")
FLAGS = ("coldstart", "runlocal")


def get_config(arg=None):
    variants = set((arg or "").split(",")) - {""}
    unknown = variants - set(DATASETS) - set(KINDS) - set(FLAGS)
    if unknown:
        raise ValueError(f"configs/amazon.py: unknown variants {sorted(unknown)} "
                         f"(known: {sorted(DATASETS)}, {list(KINDS)}, {list(FLAGS)})")
    datasets, kinds = variants & set(DATASETS), variants & set(KINDS)
    if len(datasets) > 1 or len(kinds) > 1:
        raise ValueError(f"configs/amazon.py: pick one data set and one kind, got {sorted(variants)}")
    dataset = datasets.pop() if datasets else "beauty"
    kind = kinds.pop() if kinds else "unified"

    c = base_config()
    c.task = "das_items" if kind == "items" else "recommender"
    c.data.source = "lcrec"
    c.data.path = DATASETS[dataset]
    c.data.cache_dir = "runs/amazon_cache"
    c.data.max_description_chars = 2000  # item text: the description is cut here (LC-Rec reader)
    c.data.max_history = 20  # the protocol's history length (inputs of training sequences too)
    c.data.cold_fraction = 0.05 if "coldstart" in variants else 0.0
    c.data.cold_seed = 0

    c.model.item_repr = kind if kind != "items" else "unified"
    c.model.codes_path = ""  # "" = codes learned end to end; else a tokenizer run's item_codes.parquet
    c.model.use_dedup_token = True  # fixed codes: append the de-dup token as one more code
    c.model.mlp_hidden = (512, 256)  # text → latent MLP (decoder mirrored)
    c.model.latent_dim = 32  # item tokenizer latent (TIGER: 32)
    c.model.dim = 64
    c.model.num_heads = 2
    c.model.seq_layers = 2
    c.model.dropout = 0.3

    c.quantizer.item_levels = 3
    c.quantizer.item_codes = 256
    c.quantizer.kmeans_users = 1_000_000  # k-means on all items
    c.quantizer.kmeans_iters = 30
    c.quantizer.kmeans_init = kind != "id"
    # Item tokenizer: colliding items take the nearest free last-level code of their prefix
    # (LC-Rec); the report keeps the nearest-code collision rate too. False: nearest codes only.
    c.quantizer.collision_free_last_level = True

    c.loss.quant_weight = 1.0
    c.loss.recon_weight = 1.0
    c.loss.beta = 0.1  # weight of L_align (DAS) in the item tokenizer
    c.loss.w_u2i = 1.0
    c.loss.w_cooc = 1.0
    c.loss.temperature = 0.1

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 512
    c.eval.popularity_buckets = 3

    c.train.progress = False
    if kind == "items":
        c.train.batch_size = 256
        c.train.steps = 2000
        c.train.lr = 1e-3
        c.train.warmup_steps = 100
        c.quantizer.kmeans_at_step = 200
        c.quantizer.reset_every = 100
        c.train.log_every = 50
        c.train.eval_every = 500
        c.train.checkpoint_every = 500
    else:
        c.train.batch_size = 256
        c.train.steps = 3000 if dataset == "beauty" else 2000  # ~34 (Beauty) / ~100 (Office) epochs
        c.train.lr = 1e-3
        c.train.warmup_steps = 200
        c.train.weight_decay = 0.0
        c.quantizer.kmeans_at_step = 200
        c.quantizer.reset_every = 100
        c.train.log_every = 100
        c.train.eval_every = 250
        c.train.checkpoint_every = 500
        c.train.select_metric = "valid_NDCG@10"
        c.train.target_capacity = -1  # score the positions with a target only, room sized from the data (0: all)
        c.loss.recon_items = 2048  # text reconstruction estimated on this many items per step (0: all)

    if "runlocal" in variants:
        c.data.max_description_chars = 100  # short texts: the sentence encoder runs in seconds
        c.model.mlp_hidden = (64,)
        c.model.dim = 32
        c.model.seq_layers = 1
        c.quantizer.item_codes = 32
        c.quantizer.kmeans_iters = 3
        c.quantizer.kmeans_at_step = 2
        c.quantizer.reset_every = 2
        c.train.batch_size = 64
        c.train.steps = 6
        c.train.warmup_steps = 2
        c.train.log_every = 2
        c.train.eval_every = 3
        c.train.checkpoint_every = 6
    return c
