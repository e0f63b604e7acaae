"""k-fold validation: K seeded folds recorded in config.json, trials scored by the mean over the searched folds."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from ray_helpers import IMAGE_SIZE, LOSS, logged_results

import search
from results import ledger
from trainables.config import RAY_TRIAL_ID_ATTR, SELECTION_METRIC

FOLDS, SEARCHED = 4, 2


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfold")
    argv = ["--loss", LOSS, "--protocol", "kfold", "--folds", str(FOLDS), "--search-folds", str(SEARCHED),
            "--trials", "2", "--max-epochs", "1", "--final-epochs", "1", "--image-size", str(IMAGE_SIZE),
            "--out", str(out)]
    assert search.main(argv) == 0
    return out


def test_config_records_every_folds_class_ids(kfold_run) -> None:
    config = json.loads((kfold_run / "config.json").read_text())
    folds, test = config["split"]["folds"], set(config["split"]["test"])
    assert len(folds) == FOLDS and config["command"]["search_folds"] == SEARCHED
    train = set(folds[0]["fit"]) | set(folds[0]["val"])
    vals = [set(f["val"]) for f in folds]
    assert set().union(*vals) == train and sum(map(len, vals)) == len(train)  # each class validates once
    assert all(set(f["fit"]) == train - set(f["val"]) for f in folds) and not train & test


def test_a_trial_scores_the_mean_validation_recall_over_its_folds(kfold_run) -> None:
    study = optuna.load_study(study_name="dmltune", storage=f"sqlite:///{kfold_run / 'study.db'}")
    for trial in study.trials:
        (result,) = logged_results(kfold_run / "ray", trial.user_attrs[RAY_TRIAL_ID_ATTR])
        per_fold = result[f"{SELECTION_METRIC}_folds"]
        assert len(per_fold) == SEARCHED
        assert result[SELECTION_METRIC] == pytest.approx(np.mean(per_fold)) == trial.value


def test_the_retrain_uses_all_training_classes(kfold_run) -> None:
    config = json.loads((kfold_run / "config.json").read_text())
    (entry,) = ledger.read(kfold_run / ledger.LEDGER_NAME)
    trained = set(entry["split"]["fit"]) | set(entry["split"]["val"])
    assert trained == set().union(*(f["val"] for f in config["split"]["folds"]))  # every training class


@pytest.mark.parametrize("argv,expected", [
    (["--search-folds", "5", "--folds", "4", "--protocol", "kfold"], "--search-folds 5 exceeds --folds 4"),
    (["--folds", "4"], "belong to --protocol kfold"),
    (["--folds", "1", "--protocol", "kfold"], "at least 2"),
])
def test_inconsistent_fold_flags_are_refused(argv, expected, capsys, tmp_path) -> None:
    assert search.main(["--loss", LOSS, "--out", str(tmp_path / "r"), *argv]) == 2
    assert expected in capsys.readouterr().err
