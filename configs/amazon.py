"""Item semantic IDs and the unified ID + semantic recommender on Amazon 2014 (LC-Rec layout).

  python train.py --config configs/amazon.py:beauty,rqvae    --workdir runs/beauty_rqvae
  python train.py --config configs/amazon.py:beauty,items    --workdir runs/beauty_items
  python train.py --config configs/amazon.py:beauty,id       --workdir runs/beauty_id
  python train.py --config configs/amazon.py:beauty,semantic --workdir runs/beauty_semantic
  python train.py --config configs/amazon.py:beauty,unified  --workdir runs/beauty_unified
  python train.py --config configs/amazon.py:beauty,unified,coldstart --workdir runs/beauty_unified_cold
  python train.py --config configs/amazon.py:lcrec,items --config.data.path=DIR --workdir runs/mine_items
Variants, comma-separated:
  beauty | office      the data set (data.path = ../shared/data/amazon-<name>-2014)
  lcrec                any other directory in the LC-Rec layout (give --config.data.path=DIR). The
                       schedule is in epochs (train.epochs: tokenizers as Beauty's step counts in
                       passes over its rows, items 3.5, rqvae 85; recommenders 100, past the latest
                       validation peak of the Beauty/Office runs, 91 epochs, since the best validation
                       step is kept), so it scales with the data; the log line "schedule: ..." says the
                       steps it came to and every interval it shortened to fit
  rqvae                a plain RQ-VAE item tokenizer (TIGER's, and RQ-VAE-Recommender's: 384→512→256→128→32
                       MLP, 3 codes × 256, commitment 0.25, k-means init, AdamW 1e-3, batch 512, 2,000
                       steps, L2-normalised text, reconstruction summed over dimensions): the
                       yardstick configuration, trained on the item table
  items                the DAS item tokenizer (task item_tokenizer): item → 3 codes × 256 + de-dup token,
                       with u2i / i2i alignment (trained on sequence positions)
  id | semantic | unified   the recommender (task recommender) with that item representation;
                       semantic and unified learn their codes end to end (Lin et al.) unless
                       --config.model.codes_path=<tokenizer run>/semantic_ids.parquet gives fixed ones
  coldstart            remove a seeded random 5% of the items from all training sequences
  runlocal             a few steps on small models, for tests
Text embeddings and example files are cached in data.cache_dir (shared by all variants).
Recommender runs keep the parameters with the best validation NDCG@10 and report test metrics.
Every key: u2qt/defaults.py (families item_tokenizer and recommender).
"""
from u2qt import config as config_lib
from u2qt import defaults

DATASETS = {"beauty": "../shared/data/amazon-beauty-2014", "office": "../shared/data/amazon-office-2014",
            "lcrec": ""}
# The lcrec variant's schedule in passes over the data: the tokenizers' as on Beauty (steps × batch /
# training rows); the recommenders' past the latest validation peak seen (Office, ID: step 1,750 of
# 2,000 = 91 epochs; Beauty's peaked at 23-34), as the best validation step is what is kept.
EPOCHS = {"items": 3.5, "rqvae": 85.0, "id": 100.0, "semantic": 100.0, "unified": 100.0}


def get_config(arg=None):
    v = config_lib.variants(arg, "configs/amazon.py",
                            choose={"data set": tuple(DATASETS), "kind": ("rqvae", "items", "id", "semantic", "unified")},
                            flags=("coldstart", "runlocal"))
    dataset, kind = v["data set"] or "beauty", v["kind"] or "unified"
    if kind in ("items", "rqvae"):
        c = defaults.item_tokenizer()
        c.train.steps = 2000
        c.train.warmup_steps = 100
        c.train.log_every = 50
        c.train.eval_every = 500
    else:
        c = defaults.recommender()
        c.model.item_repr = kind
        c.data.cold_fraction = 0.05 if v["coldstart"] else 0.0
        c.train.steps = 3000 if dataset == "beauty" else 2000  # ~34 (Beauty) / ~100 (Office) epochs
        c.train.warmup_steps = 200
        c.train.weight_decay = 0.0
        c.train.log_every = 100
        c.train.eval_every = 250
        c.quantizer.kmeans_init = kind != "id"
    c.data.path = DATASETS[dataset]
    if dataset == "lcrec":
        c.train.epochs = EPOCHS[kind]
    c.data.cache_dir = "runs/amazon_cache"
    c.train.batch_size = 256
    c.train.lr = 1e-3
    c.train.checkpoint_every = 500
    c.train.progress = False
    c.quantizer.kmeans_rows = 1_000_000  # k-means on all items
    c.quantizer.kmeans_iters = 30
    c.quantizer.kmeans_at_step = 200
    c.quantizer.reset_every = 100
    if kind == "rqvae":
        c.loss.beta = 0.0  # no alignment: no SASRec, no co-occurrence rows; rows are the items
        # The peer's job exactly: L2-normalised text embeddings and the reconstruction error summed
        # over the 384 dimensions (u2qt's loss averages them; the weight restores the sum).
        c.data.text_norm = "l2"
        c.loss.recon_weight = 384.0
        c.model.mlp_hidden = (512, 256, 128)
        c.train.batch_size = 512
        c.train.weight_decay = 1e-4
        c.quantizer.kmeans_at_step = 0  # k-means on the first encodings, as the peer does

    if v["runlocal"]:
        c.data.max_description_chars = 100  # short texts: the sentence encoder runs in seconds
        c.model.mlp_hidden = (64,)
        c.model.dim = 32
        c.model.seq_layers = 1
        c.quantizer.item_codes = 32
        c.quantizer.kmeans_iters = 3
        c.quantizer.kmeans_at_step = 2
        c.quantizer.reset_every = 2
        defaults.short_schedule(c)
    return c


# Sweeps (python sweep.py --config configs/amazon.py:office,unified --sweep lr --dir sweeps/office_unified_lr;
# u2qt/sweep.py): around the configs' learning rate, and seeds for the spread of one setting.
def sweep_lr():
    for lr in (3e-4, 1e-3, 3e-3):
        yield {"train.lr": lr}


def sweep_seed():
    for seed in (0, 1, 2):
        yield {"seed": seed}
