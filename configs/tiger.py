"""Generative retrieval (TIGER) on Amazon 2014 or any LC-Rec directory: decode the next item's
semantic ID with beam search constrained to real items; judged by leave-one-out full ranking.

  python train.py --config configs/amazon.py:beauty,items --workdir runs/beauty_items   # the IDs, first
  python train.py --config configs/tiger.py:beauty --workdir runs/beauty_tiger
Variants, comma-separated:
  beauty | office | lcrec   the data set (lcrec: any LC-Rec directory, --config.data.path=DIR, and
                       a schedule in epochs)
  items | rqvae | random    whose IDs (model.codes_path): the DAS item tokenizer's run (default,
                       runs/<data set>_items), the plain RQ-VAE's (runs/<data set>_rqvae), or random
                       codes of the same shape (3 × 256 + de-dup token), the ablation's baseline.
                       For lcrec, or a run elsewhere, give --config.model.codes_path=PATH (a
                       semantic_ids.parquet or a LETTER/GRID index .json)
  coldstart            remove a seeded random 5% of the items from all training sequences (they keep
                       their IDs, so the model can still decode them)
  runlocal             a few steps on a small model, for tests
The model is TIGER's size (4 + 4 layers, 6 heads × 64, MLP 1024, d 128, dropout 0.1); AdamW with
warm-up and cosine decay; the parameters with the best validation NDCG@10 are kept; beam 20.
Every key: u2qt/defaults.py (family generative_retrieval).
"""
from u2qt import config as config_lib
from u2qt import defaults

DATASETS = {"beauty": "../shared/data/amazon-beauty-2014", "office": "../shared/data/amazon-office-2014",
            "lcrec": ""}


def get_config(arg=None):
    v = config_lib.variants(arg, "configs/tiger.py", choose={"data set": tuple(DATASETS),
                                                             "ids": ("items", "rqvae", "random")},
                            flags=("coldstart", "runlocal"))
    dataset, ids = v["data set"] or "beauty", v["ids"] or "items"
    c = defaults.generative_retrieval()
    c.data.path = DATASETS[dataset]
    c.data.cold_fraction = 0.05 if v["coldstart"] else 0.0
    c.model.codes_path = "random" if ids == "random" else (
        "" if dataset == "lcrec" else f"runs/{dataset}_{ids}/semantic_ids.parquet")
    c.train.steps = 20000  # batch 256, AdamW 1e-3 (the family's)
    c.train.warmup_steps = 500
    c.train.log_every = 100
    c.train.eval_every = 2000
    c.train.checkpoint_every = 1000
    c.train.progress = False
    if dataset == "lcrec":
        c.train.epochs = 30.0
    if v["runlocal"]:
        c.model.dim = 32
        c.model.num_heads = 2
        c.model.head_dim = 16
        c.model.mlp_dim = 64
        c.model.encoder_layers = 1
        c.model.decoder_layers = 1
        c.model.random_levels = (8, 8, 8)
        c.eval.beam = 10
        c.eval.invalid_rate_cases = 64
        defaults.short_schedule(c)
    return c
