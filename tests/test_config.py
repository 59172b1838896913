"""u2qt.config: config files with variants, command-line overrides and their error messages."""
from __future__ import annotations

import json
import re
from pathlib import Path

import ml_collections
import pytest

from u2qt.config import ConfigError, apply_override, load_config_file, parse_args, to_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs" / "default.py")


def test_load_default_and_runlocal():
    base = load_config_file(DEFAULT)
    local = load_config_file(f"{DEFAULT}:runlocal")
    assert isinstance(local, ml_collections.ConfigDict)
    assert local.train.steps < base.train.steps and local.model.dim < base.model.dim
    assert local.data.synthetic_users < base.data.synthetic_users
    # Loaded configs are locked: a typo cannot add a new field silently.
    with pytest.raises(AttributeError):
        local.train.stpes = 3


def test_unknown_variant_of_default_raises():
    with pytest.raises(ValueError, match="nosuchvariant"):
        load_config_file(f"{DEFAULT}:nosuchvariant")
    with pytest.raises(ValueError, match="nosuchvariant"):
        parse_args(["--config", f"{DEFAULT}:nosuchvariant"], DEFAULT)


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "nope.py")
    with pytest.raises(ConfigError, match="nope.py"):
        load_config_file(missing)
    with pytest.raises(ConfigError, match="nope.py"):
        parse_args(["--config", f"{missing}:runlocal"], DEFAULT)


def test_config_file_without_get_config(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("X = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        load_config_file(str(path))


def test_parse_args_config_variant_and_workdir():
    cfg, workdir = parse_args(["--config", f"{DEFAULT}:runlocal", "--workdir", "/tmp/run1"], DEFAULT)
    assert cfg.train.steps == load_config_file(f"{DEFAULT}:runlocal").train.steps
    assert workdir == "/tmp/run1"
    # The --flag=value spelling works as well.
    cfg2, workdir2 = parse_args([f"--config={DEFAULT}:runlocal", "--workdir=/tmp/run2"], DEFAULT)
    assert cfg2.to_dict() == cfg.to_dict() and workdir2 == "/tmp/run2"


def test_parse_args_defaults():
    cfg, workdir = parse_args([], f"{DEFAULT}:runlocal")
    assert workdir is None
    assert cfg.to_dict() == load_config_file(f"{DEFAULT}:runlocal").to_dict()


def test_overrides_of_every_type():
    cfg, _ = parse_args([
        "--config", f"{DEFAULT}:runlocal",
        "--config.train.steps=7",              # int
        "--config.train.lr=0.5",               # float
        "--config.loss.alpha=2",               # an int literal for a float field
        "--config.train.progress=False",       # bool
        "--config.model.sources=tabular,behaviour",  # tuple, comma-separated
        "--config.data.format=movielens",      # bare string
        "--config.data.path", "/data/ml-1m",   # value as the next argument
        "--config.data.cache_dir=123",         # a string field keeps digits as text
    ], DEFAULT)
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == 0.5
    assert cfg.loss.alpha == 2.0 and isinstance(cfg.loss.alpha, float)
    assert cfg.train.progress is False
    assert cfg.model.sources == ("tabular", "behaviour")
    assert cfg.data.format == "movielens" and cfg.data.path == "/data/ml-1m"
    assert cfg.data.cache_dir == "123"
    # Untouched fields keep the variant's values; the config stays locked.
    assert cfg.model.dim == load_config_file(f"{DEFAULT}:runlocal").model.dim
    with pytest.raises(AttributeError):
        cfg.train.new_field = 1


def test_tuple_overrides():
    cfg = load_config_file(DEFAULT)
    apply_override(cfg, "model.sources", "behaviour")
    assert cfg.model.sources == ("behaviour",)
    apply_override(cfg, "model.sources", "('text', 'tabular')")  # a Python literal
    assert cfg.model.sources == ("text", "tabular")
    apply_override(cfg, "data.exclude_user_columns", "gender,age")
    assert cfg.data.exclude_user_columns == ("gender", "age")
    with pytest.raises(ConfigError, match="model.sources"):
        apply_override(cfg, "model.sources", "3")


def test_int_override_accepts_integral_float_rejects_fraction():
    cfg = load_config_file(DEFAULT)
    apply_override(cfg, "train.steps", "30.0")
    assert cfg.train.steps == 30 and isinstance(cfg.train.steps, int)
    with pytest.raises(ConfigError, match="train.steps"):
        apply_override(cfg, "train.steps", "2.5")
    assert cfg.train.steps == 30  # a failed override leaves the value alone


@pytest.mark.parametrize("key,value", [
    ("train.steps", "many"), ("train.lr", "fast"), ("train.steps", "True"), ("train.progress", "1"),
    ("train.progress", "yes"), ("loss.alpha", "[1]"),
])
def test_wrong_type_names_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_args(["--config", f"{DEFAULT}:runlocal", f"--config.{key}={value}"], DEFAULT)


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"train\.stpes") as err:
        parse_args(["--config", f"{DEFAULT}:runlocal", "--config.train.stpes=3"], DEFAULT)
    assert "train.steps" in str(err.value)  # the suggestion
    with pytest.raises(ConfigError, match=r"nosuch\.section\.key"):
        parse_args(["--config.nosuch.section.key=3"], f"{DEFAULT}:runlocal")
    # A key below a leaf is unknown too.
    with pytest.raises(ConfigError, match=r"train\.steps\.x"):
        apply_override(load_config_file(DEFAULT), "train.steps.x", "3")


def test_section_cannot_be_overridden():
    with pytest.raises(ConfigError, match="section"):
        apply_override(load_config_file(DEFAULT), "train", "3")


@pytest.mark.parametrize("argv", [["--steps=3"], ["train.steps=3"], ["--configs", "x"], ["--workdirx=/tmp"]])
def test_unknown_argument(argv):
    with pytest.raises(ConfigError, match="unknown argument"):
        parse_args(argv, f"{DEFAULT}:runlocal")


@pytest.mark.parametrize("argv", [["--config"], ["--workdir"], ["--config.train.steps"]])
def test_flag_without_value(argv):
    with pytest.raises(ConfigError, match="needs a value"):
        parse_args(argv, f"{DEFAULT}:runlocal")


def test_to_json_round_trips_values():
    cfg, _ = parse_args(["--config.model.sources=behaviour,text", "--config.train.steps=9"], f"{DEFAULT}:runlocal")
    data = json.loads(to_json(cfg))
    assert data["model"]["sources"] == ["behaviour", "text"]
    assert data["train"]["steps"] == 9
    assert data["loss"]["alpha"] == cfg.loss.alpha


def test_overrides_apply_to_the_config_named_later():
    cfg, _ = parse_args(["--config.train.steps=11", "--config", f"{DEFAULT}:runlocal"], DEFAULT)
    assert cfg.train.steps == 11
    assert cfg.model.dim == load_config_file(f"{DEFAULT}:runlocal").model.dim


def test_help_exits_with_usage():
    with pytest.raises(SystemExit, match="usage"):
        parse_args(["--help"], DEFAULT)


# ----------------------------------------------------------------------------- validate
def validate(cfg):
    from u2qt import config, defaults
    config.validate(cfg, defaults.CONSTRAINTS, defaults.cross_key_problems)


def _variants():
    specs = [DEFAULT, f"{DEFAULT}:runlocal", str(ROOT / "configs" / "movielens.py"),
             str(ROOT / "configs" / "movielens.py") + ":runlocal"]
    for data in ("beauty", "office", "lcrec"):
        for kind in ("rqvae", "items", "id", "semantic", "unified"):
            for extra in ("", ",runlocal", ",coldstart"):
                if extra == ",coldstart" and kind in ("rqvae", "items"):
                    continue
                specs.append(str(ROOT / "configs" / "amazon.py") + f":{data},{kind}{extra}")
    for data in ("ml1m", "beauty"):
        for model in ("mrff", "fedavg", "central"):
            for extra in ("", ",runlocal", ",paper", ",adamw", ",paper,adamw,runlocal"):
                if ("paper" in extra and model != "mrff") or ("adamw" in extra and model == "central"):
                    continue  # refused: test_federated_variants_that_do_not_fit_the_model_are_refused
                specs.append(str(ROOT / "configs" / "federated.py") + f":{data},{model}{extra}")
    return specs


def test_federated_variants_that_do_not_fit_the_model_are_refused():
    spec = str(ROOT / "configs" / "federated.py")
    with pytest.raises(ConfigError, match="paper variant lays out MRFF; fedavg"):
        load_config_file(spec + ":beauty,fedavg,paper")
    with pytest.raises(ConfigError, match="adamw variant is a federated schedule"):
        load_config_file(spec + ":ml1m,central,adamw")


@pytest.mark.parametrize("spec", _variants())
def test_every_shipped_config_is_valid(spec):
    cfg = load_config_file(spec)
    if ":lcrec" in spec:  # any LC-Rec directory: the user names it
        cfg.data.path = "some/lcrec/dir"
    validate(cfg)


@pytest.mark.parametrize("key,value,message", [
    ("train.keep_checkpoints", "0", "train.keep_checkpoints=0 must be an integer >= 1"),
    ("train.steps", "0", "train.steps=0 must be an integer >= 1"),
    ("train.steps", "-5", "train.steps=-5"),
    ("train.batch_size", "0", "train.batch_size=0"),
    ("train.checkpoint_every", "0", "train.checkpoint_every=0"),
    ("train.log_every", "0", "train.log_every=0"),
    ("train.eval_every", "-1", "train.eval_every=-1"),
    ("train.lr", "0", "train.lr=0"),
    ("model.view_dropout", "1.5", "model.view_dropout=1.5 must be in [0, 1]"),
    ("model.dropout", "1.5", "model.dropout=1.5 must be in [0, 1)"),
    ("quantizer.shared_codes", "1", "quantizer.shared_codes=1 must be an integer >= 2"),
    ("quantizer.source_levels", "0", "quantizer.source_levels=0"),
    ("data.max_events", "0", "data.max_events=0"),
    ("model.num_heads", "5", "model.dim=64 must be a multiple of model.num_heads=5"),
    ("quantizer.kmeans_at_step", "500", "quantizer.kmeans_at_step=500 must be < train.steps=500"),
    ("loss.temperature", "0", "loss.temperature=0"),
])
def test_a_bad_value_is_refused_naming_the_key(key, value, message):
    cfg = load_config_file(DEFAULT)
    apply_override(cfg, key, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)


def test_every_problem_is_reported_at_once_and_kmeans_rule_follows_kmeans_init():
    cfg = load_config_file(DEFAULT)
    for key, value in {"train.steps": "100", "train.keep_checkpoints": "0", "model.dropout": "-0.1"}.items():
        apply_override(cfg, key, value)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    text = str(err.value)
    assert "train.keep_checkpoints=0" in text and "model.dropout=-0.1" in text
    assert "quantizer.kmeans_at_step=150 must be < train.steps=100" in text
    apply_override(cfg, "quantizer.kmeans_init", "False")
    apply_override(cfg, "train.keep_checkpoints", "1")
    apply_override(cfg, "model.dropout", "0.1")
    validate(cfg)  # no k-means: the step does not matter


def test_a_runs_config_json_is_a_config(tmp_path):
    from u2qt import config as config_lib
    cfg = load_config_file(DEFAULT + ":runlocal")
    (tmp_path / "config.json").write_text(config_lib.to_json(cfg))
    again = load_config_file(str(tmp_path / "config.json"))
    assert config_lib.flat(again) == config_lib.flat(cfg)
    assert isinstance(again.model.sources, tuple)  # lists come back as the families' tuples
    config_lib.apply_override(again, "data.exclude_user_columns", "gender,age")
    assert again.data.exclude_user_columns == ("gender", "age")
    with pytest.raises(config_lib.ConfigError, match="takes no :variant"):
        load_config_file(str(tmp_path / "config.json") + ":runlocal")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(config_lib.ConfigError, match="not a u2qt run's config.json"):
        load_config_file(str(tmp_path / "other.json"))


def test_a_config_json_from_an_older_version_gets_the_new_keys_defaults(tmp_path):
    from u2qt import config as config_lib
    tree = json.loads(to_json(load_config_file(DEFAULT + ":runlocal")))
    del tree["train"]["epochs"]  # a key added after this run was made
    (tmp_path / "config.json").write_text(json.dumps(tree))
    cfg = load_config_file(str(tmp_path / "config.json"))
    assert cfg.train.epochs == 0.0 and cfg.train.steps == tree["train"]["steps"]
    tree["train"]["retired_key"] = 3
    (tmp_path / "config.json").write_text(json.dumps(tree))
    with pytest.raises(config_lib.ConfigError, match=r"keys \['train.retired_key'\] are not in this version"):
        load_config_file(str(tmp_path / "config.json"))
