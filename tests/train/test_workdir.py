"""The resume check of a workdir's config (u2qt/train/workdir.py: check_config), without training."""
import json
import os

import pytest

from conftest import REPO
from u2qt import config as config_lib
from u2qt.errors import WorkdirError
from u2qt.train.workdir import check_config, save_config


def _finished(tmp_path, cfg):
    workdir = str(tmp_path / "run")
    os.makedirs(os.path.join(workdir, "checkpoints", "100"))  # what has_checkpoint looks for
    save_config(cfg, workdir)
    return workdir


def _config(**overrides):
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "efficientrec.py") + ":office")
    for key, value in overrides.items():
        config_lib.apply_override(cfg, key, value)
    return cfg


def test_evaluation_settings_may_change_on_resume_and_training_ones_may_not(tmp_path):
    workdir = _finished(tmp_path, _config())
    check_config(_config(**{"eval.shortlist_sizes": "(20,40)", "eval.shortlist_from": "interactions"}), workdir)
    with pytest.raises(WorkdirError, match=r"different config \(train\.lr: 0\.001 -> 0\.5\)"):
        check_config(_config(**{"train.lr": "0.5"}), workdir)


def test_a_config_saved_before_a_key_existed_resumes_with_the_key_s_old_meaning(tmp_path):
    workdir = _finished(tmp_path, _config())
    path = os.path.join(workdir, "config.json")
    saved = json.load(open(path))
    del saved["mesh"]  # as written before mesh.model existed
    json.dump(saved, open(path, "w"))
    check_config(_config(), workdir)  # mesh.model=1 is what an absent key meant


def test_the_code_health_sample_may_change_on_resume_even_when_the_saved_config_predates_it(tmp_path):
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "default.py"))
    workdir = _finished(tmp_path, cfg)
    path = os.path.join(workdir, "config.json")
    saved = json.load(open(path))
    del saved["quantizer"]["health_rows"]  # as written before the key existed
    json.dump(saved, open(path, "w"))
    config_lib.apply_override(cfg, "quantizer.health_rows", "100000")
    check_config(cfg, workdir)
    config_lib.apply_override(cfg, "quantizer.kmeans_rows", "100")
    with pytest.raises(WorkdirError, match="quantizer.kmeans_rows"):
        check_config(cfg, workdir)


def test_a_federated_run_saved_before_the_server_optimizer_existed_resumes_as_fedavg(tmp_path):
    from u2qt.train.workdir import ADDED_LATER
    cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "federated.py") + ":ml1m")
    added = {k.split(".")[1]: v for k, v in ADDED_LATER.items() if k.startswith("federated.")}
    # What runs before each key did: FedAvg at lr 1 with no schedule, AdamW clients.
    assert {k: added[k] for k in ("server_optimizer", "server_lr", "server_schedule", "server_warmup_rounds",
                                  "client_optimizer")} == {"server_optimizer": "sgd", "server_lr": 1.0,
                                                           "server_schedule": "constant",
                                                           "server_warmup_rounds": 0, "client_optimizer": "adamw"}
    for key, value in added.items():  # a run of those days: AdamW clients, a constant FedAvg server
        cfg.federated[key] = value
    workdir = _finished(tmp_path, cfg)
    path = os.path.join(workdir, "config.json")
    saved = json.load(open(path))
    for key in added:
        del saved["federated"][key]
    json.dump(saved, open(path, "w"))
    check_config(cfg, workdir)  # the defaults are what the absent keys meant
    config_lib.apply_override(cfg, "federated.server_optimizer", "adam")
    with pytest.raises(WorkdirError, match="federated.server_optimizer"):
        check_config(cfg, workdir)
