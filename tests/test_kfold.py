"""k-fold validation: K seeded folds recorded in config.json, trials scored by the mean over the searched folds."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ray_helpers import IMAGE_SIZE, LOSS, ResultLog, glyph_folds, glyph_setup, logged_results, space

import search
from results import ledger, tables
from trainables.config import SELECTION_METRIC
from trainables.data import build_dataset
from trainables.study import RAY_TRIAL_ID_ATTR
from trainables.tune_search import SearchSettings, run_search

FOLDS, SEARCHED = 4, 2


def _args(tmp_path, *extra: str):
    return search.build_parser().parse_args(["--loss", LOSS, "--protocol", "kfold", "--folds", str(FOLDS),
                                             "--search-folds", str(SEARCHED), "--out", str(tmp_path), *extra])


def test_config_records_every_folds_class_ids_and_the_retrain_gets_all_training_classes(tmp_path) -> None:
    cfg = search.run_config(_args(tmp_path), [])
    dataset = build_dataset("glyphs", None, IMAGE_SIZE)
    folds = search.validation_splits(dataset, cfg)
    search.write_config(tmp_path, cfg, dataset, folds)
    config = json.loads((tmp_path / "config.json").read_text())
    recorded, train = config["split"]["folds"], {int(c) for c in dataset.train_classes}
    assert len(recorded) == FOLDS and config["command"]["search_folds"] == SEARCHED
    vals = [set(f["val"]) for f in recorded]
    assert set().union(*vals) == train and sum(map(len, vals)) == len(train)  # each class validates once
    assert all(set(f["fit"]) == train - set(f["val"]) for f in recorded)
    assert not train & set(config["split"]["test"])
    # run() hands the retrain folds[0]: its fit + val classes are all the training classes.
    assert set(folds[0].fit) | set(folds[0].val) == train


def test_a_trial_scores_the_mean_validation_recall_over_its_folds(tmp_path) -> None:
    log = ResultLog()
    searched = glyph_folds(folds=FOLDS)[:SEARCHED]
    run_search(tmp_path, glyph_setup(epochs=1, folds=searched), space(), [], SearchSettings(trials=2, max_epochs=1),
               echo=lambda line: None, callbacks=[log])
    study = tables.load_study(tmp_path)
    assert len(study.trials) == 2
    for trial in study.trials:
        (result,) = log.results[trial.user_attrs[RAY_TRIAL_ID_ATTR]]
        per_fold = result[f"{SELECTION_METRIC}_folds"]
        assert len(per_fold) == SEARCHED and len(set(per_fold)) == SEARCHED  # two models, two scores
        assert result[SELECTION_METRIC] == pytest.approx(np.mean(per_fold)) == trial.value


@pytest.mark.slow
def test_the_cli_runs_kfold_end_to_end(tmp_path) -> None:
    argv = ["--loss", LOSS, "--protocol", "kfold", "--folds", str(FOLDS), "--search-folds", str(SEARCHED),
            "--trials", "2", "--max-epochs", "1", "--final-epochs", "1", "--image-size", str(IMAGE_SIZE),
            "--out", str(tmp_path)]
    assert search.main(argv) == 0
    for trial in tables.load_study(tmp_path).trials:
        (result,) = logged_results(tmp_path / "ray", trial.user_attrs[RAY_TRIAL_ID_ATTR])
        assert len(result[f"{SELECTION_METRIC}_folds"]) == SEARCHED
    (entry,) = ledger.read(tmp_path / ledger.LEDGER_NAME)
    config = json.loads((tmp_path / "config.json").read_text())
    assert entry["split"] == config["split"]  # every fold, as the search used them, and the test classes


@pytest.mark.parametrize("argv,expected", [
    (["--search-folds", "5", "--folds", "4", "--protocol", "kfold"], "--search-folds 5 exceeds --folds 4"),
    (["--folds", "4"], "belong to --protocol kfold"),
    (["--folds", "1", "--protocol", "kfold"], "at least 2"),
])
def test_inconsistent_fold_flags_are_refused(argv, expected, capsys, tmp_path) -> None:
    assert search.main(["--loss", LOSS, "--out", str(tmp_path / "r"), *argv]) == 2
    assert expected in capsys.readouterr().err
