"""Nothing is computed for what is switched off: a loss term with weight 0 adds no FLOPs to the
train step and the modules only it needs have no parameters. Checked on the real train step
(`make_train_step`), lowered, with XLA's cost analysis (nothing is compiled)."""
import os

import jax
from conftest import REPO, lower_train_step, shared_data

from u2qt import config as config_lib

TEXT_CACHE = os.environ.get("U2QT_TEXT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "u2qt", "amazon")


def _step_cost(spec: str, tmp_path, **overrides) -> tuple[float, dict]:
    """(FLOPs of one lowered train step, the parameter tree's shapes)."""
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", spec))
    for key, value in {"data.cache_dir": TEXT_CACHE, **overrides}.items():
        config_lib.apply_override(cfg, key, value)
    lowered, task, _, small, constants = lower_train_step(cfg)  # data.cache_dir: the shared text-embedding cache
    cost = lowered.cost_analysis()
    params = jax.eval_shape(lambda key: task.init(key, small, constants), jax.random.key(0))
    return float(cost["flops"]), params


def test_user_tokenizer_terms_switched_off_cost_nothing(tmp_path):
    spec = "default.py:runlocal"
    full, params = _step_cost(spec, tmp_path)
    assert full > 0
    for term, override in {"u2u": {"loss.w_u2u": 0.0}, "cf": {"loss.alpha": 0.0},
                           "alignment": {"loss.beta": 0.0}}.items():
        off, _ = _step_cost(spec, tmp_path, **override)
        # Lowered (unoptimized) HLO: a term computed and multiplied by 0 would still be counted.
        assert off < full, f"switching off {term} left the step's FLOPs at {off / full:.2%}"
    _, no_cf = _step_cost(spec, tmp_path, **{"loss.alpha": 0.0})
    assert "cf_proj" in params and "cf_proj" not in no_cf


def test_item_tokenizer_without_alignment_is_a_plain_rqvae(tmp_path):
    data = {"data.path": shared_data("amazon-office-2014")}
    spec = "amazon.py:office,items,runlocal"
    full, params = _step_cost(spec, tmp_path, **data)
    off, plain = _step_cost(spec, tmp_path, **data, **{"loss.beta": 0.0})
    assert "user_encoder" in params and "user_encoder" not in plain and "user_head" not in plain
    assert set(plain) == {"encoder", "decoder", "codebooks_item"}
    assert off < 0.5 * full, f"the plain RQ-VAE step costs {off / full:.1%} of the aligned one"
    # Only one of the two alignment terms: the co-occurring item's encoder still runs, SASRec does not.
    cooc_only, p = _step_cost(spec, tmp_path, **data, **{"loss.w_u2i": 0.0})
    assert "user_encoder" not in p and off < cooc_only < full


def test_recommender_without_reconstruction_has_no_decoder(tmp_path):
    data = {"data.path": shared_data("amazon-office-2014")}
    spec = "amazon.py:office,unified,runlocal"
    full, params = _step_cost(spec, tmp_path, **data, **{"loss.recon_weight": 1.0})
    off, no_recon = _step_cost(spec, tmp_path, **data, **{"loss.recon_weight": 0.0})
    assert "decoder" in params and "decoder" not in no_recon
    assert off < full
