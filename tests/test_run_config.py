"""RunConfig: the CLI's one typed run configuration, validated, and kept exactly by config.json."""
from __future__ import annotations

import dataclasses
import json

import pytest

import search
from trainables.data.splits import fixed_split
from trainables.run_config import AUTO, RunConfig


def _cfg(*flags: str) -> RunConfig:
    argv = ["--loss", "proxy_anchor", *flags]
    return search.run_config(search.build_parser().parse_args(argv), argv)


@pytest.mark.parametrize("flags", [
    [],
    ["--protocol", "kfold", "--folds", "4", "--final-epochs", "7", "--seeds", "2", "--m-per-class", "0"],
    ["--dataset", "cub", "--data-root", "/data/cub", "--no-freeze-bn", "--lr-gamma", "0.25", "--cpus-per-trial", "2.5",
     "--gpus-per-trial", "0.5", "--address", "auto", "--storage-path", "s3://bucket/runs"],
])
def test_config_json_gives_back_the_config_it_was_written_from(flags, blobs, tmp_path) -> None:
    cfg = dataclasses.replace(_cfg("--out", str(tmp_path), *flags), pretrained_weights="ResNet50_Weights.IMAGENET1K_V2")
    folds = [fixed_split(blobs.train_classes, 0.3, seed=0)]
    search.write_config(tmp_path, cfg, blobs, folds)
    written = json.loads((tmp_path / "config.json").read_text())
    assert RunConfig.from_json(written["command"]) == cfg
    assert written["command"]["out"] == str(tmp_path) and written["command"]["ks"] == list(cfg.ks)  # plain JSON


def test_the_dataset_recipe_fills_only_what_no_flag_gave() -> None:
    cub = _cfg("--dataset", "cub", "--data-root", ".", "--warmup-epochs", "0", "--batch-size", "32")
    assert (cub.backbone, cub.image_size, cub.lr, cub.ks) == ("resnet50", 224, 1e-4, (1, 2, 4, 8))
    assert (cub.warmup_epochs, cub.batch_size, cub.freeze_bn, cub.top_k) == (0, 32, True, 3)
    kfold = _cfg("--protocol", "kfold", "--folds", "2")
    assert (kfold.folds, kfold.search_folds) == (2, 2)
    assert (_cfg().folds, _cfg().top_k, _cfg().final_epochs) == (None, 1, AUTO)


def test_an_older_config_json_is_read_and_one_from_another_version_is_refused() -> None:
    written = _cfg().to_json()
    assert RunConfig.from_json(written | {"resume": False}) == _cfg()  # the old per-driver flag is dropped
    assert RunConfig.from_json({k: v for k, v in written.items() if k != "pretrained_weights"}) == _cfg()
    with pytest.raises(ValueError, match=r"missing \['grad_clip'\].*version that wrote it"):
        RunConfig.from_json({k: v for k, v in written.items() if k != "grad_clip"})
    with pytest.raises(ValueError, match=r"unknown \['mixup'\]"):
        RunConfig.from_json(written | {"mixup": 0.2})


@pytest.mark.parametrize("change,message", [
    ({"reduction_factor": 1}, "--reduction-factor must be a whole number of at least 2, but got 1"),
    ({"trials": 0}, "--trials must be a whole number of at least 1, but got 0"),
    ({"top_k": 9}, "--top-k 9 exceeds --trials 8"),
    ({"grace_period": 11}, "--grace-period 11 exceeds --max-epochs 10"),
    ({"val_fraction": 1.0}, "--val-fraction must be between 0 and 1 (exclusive), but got 1.0"),
    ({"final_epochs": "best"}, "--final-epochs must be auto or a whole number of at least 1, but got 'best'"),
    ({"lr_schedule": "linear"}, "--lr-schedule must be one of none, step, cosine, but got 'linear'"),
    ({"m_per_class": 65}, "--m-per-class 65 exceeds the batch size 64"),
    ({"folds": 4}, "--folds and --search-folds belong to --protocol kfold"),
    ({"protocol": "kfold", "folds": 1, "search_folds": 1}, "--folds must be at least 2"),
    ({"protocol": "kfold", "folds": 3, "search_folds": 4}, "--search-folds 4 exceeds --folds 3"),
])
def test_bad_settings_are_refused_naming_the_flag_and_the_value(change, message) -> None:
    with pytest.raises(ValueError) as refused:
        dataclasses.replace(_cfg(), **change)
    assert message in str(refused.value)


def test_the_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _cfg().trials = 3  # type: ignore[misc]


def test_a_reduction_factor_of_one_is_refused_by_the_parser(capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--loss", "ms", "--reduction-factor", "1", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "--reduction-factor: must be a whole number of at least 2, but got 1" in \
        capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_tournament_keeps_its_losses_and_an_older_config_json_its_one_loss(blobs, tmp_path) -> None:
    argv = ["--loss", "all", "--out", str(tmp_path)]
    cfg = search.run_config(search.build_parser().parse_args(argv), argv)
    assert cfg.loss is None and cfg.tournament and cfg.losses == tuple(search.LOSS_CHOICES)
    search.write_config(tmp_path, cfg, blobs, [fixed_split(blobs.train_classes, 0.3, seed=0)])
    written = json.loads((tmp_path / "config.json").read_text())["command"]
    assert RunConfig.from_json(written) == cfg and written["losses"] == list(search.LOSS_CHOICES)
    older = {k: v for k, v in _cfg("--out", str(tmp_path)).to_json().items() if k != "losses"}
    assert RunConfig.from_json(older).losses == ("proxy_anchor",) and not RunConfig.from_json(older).tournament
    with pytest.raises(ValueError, match="one loss searched"):
        dataclasses.replace(cfg, loss="ms")


def test_resume_with_other_losses_is_refused(blobs, tmp_path) -> None:
    folds = [fixed_split(blobs.train_classes, 0.3, seed=0)]
    search.write_config(tmp_path, _cfg("--out", str(tmp_path)), blobs, folds)
    argv = ["--loss", "proxy_anchor,ms", "--out", str(tmp_path)]
    with pytest.raises(search.UsageError, match="run of --loss proxy_anchor; --resume needs the same --loss"):
        search.write_config(tmp_path, search.run_config(search.build_parser().parse_args(argv), argv), blobs, folds)
