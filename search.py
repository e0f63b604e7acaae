"""dmltune: choose a deep-metric-learning loss's hyperparameters without looking at the test classes.

    python search.py --loss softtriple

split the training classes into fit/validation classes -> search (Optuna TPE in Ray Tune, ASHA
on validation Recall@1) -> select the best configs -> retrain them on all training classes ->
test once -> write the run directory (docs/protocol.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from results import ledger, runlock, tables
from results.console import ledger_frame, print_final, print_recorded
from results.failures import SearchFailed, check_selectable
from results.final import TestStageFailed, retrain_and_test
from results.provenance import provenance
from results.select import select_per_loss
from spaces import SPACES, OptimiserDefaults, default_config, define_by_run
from trainables.config import LR_SCHEDULES
from trainables.data import DATASETS, build_dataset, recipe
from trainables.data.base import DMLDataset
from trainables.data.images import ImageReadError
from trainables.data.packed import DataTooLarge, for_workers
from trainables.atomic import write_atomic
from trainables.data.splits import ClassSplit, fixed_split, kfold_splits
from trainables.losses import LOSSES
from trainables.models import PRETRAINED_WEIGHTS, fetch_pretrained
from trainables.run_config import AUTO, FOLDS, PROTOCOLS, SEARCH_FOLDS, RunConfig
from trainables.study import LOSS_KEY

LOSS_CHOICES = sorted(set(LOSSES) & set(SPACES))
ALL = "all"  # --loss all: a tournament of every loss


def _checked(kind: Callable[[str], Any], ok: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse type: parse with `kind`, refuse a value that breaks `rule`, naming it."""
    def parse(text: str) -> Any:
        value = kind(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, but got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value: 'x'"
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a whole number of at least 1")
_reduction = _checked(int, lambda v: v >= 2, "a whole number of at least 2")
_non_negative_int = _checked(int, lambda v: v >= 0, "a whole number of 0 or more")
_positive_float = _checked(float, lambda v: v > 0, "greater than 0")
_non_negative_float = _checked(float, lambda v: v >= 0, "0 or more")
_fraction = _checked(float, lambda v: 0 < v <= 1, "greater than 0 and at most 1")


def _final_epochs(text: str) -> int | str:
    if text == AUTO:
        return text
    try:
        return _positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {AUTO} or a whole number of at least 1, but got {text}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--loss", required=True,
                   help=f"loss whose hyperparameters are searched: one of {', '.join(LOSS_CHOICES)}; or a "
                        f"tournament: {ALL} (every loss) or a comma-separated list, each loss searched with the "
                        "same budget and chosen by validation")
    p.add_argument("--dataset", default="glyphs", choices=sorted(DATASETS),
                   help="glyphs is embedded (generated, no download)")
    p.add_argument("--data-root", help="dataset folder for datasets read from disk (docs/datasets.md)")
    p.add_argument("--trials", type=_positive_int, default=8, help="number of Optuna/Ray trials")
    p.add_argument("--max-epochs", type=_positive_int, default=10, help="search budget per trial (ASHA max_t)")
    p.add_argument("--grace-period", type=_positive_int, default=1, help="ASHA: epochs before a trial may be stopped")
    p.add_argument("--reduction-factor", type=_reduction, default=3, help="ASHA: keep 1/this of trials per rung")
    p.add_argument("--final-epochs", type=_final_epochs, default=AUTO,
                   help="retrain epochs, or auto: each config's best validation epoch in the search")
    p.add_argument("--top-k", type=_positive_int, help="configs to retrain and test (default: 1 on glyphs, 3 else)")
    p.add_argument("--seeds", type=_positive_int, default=1, help="retrain seeds per config")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of training classes held out")
    p.add_argument("--protocol", choices=PROTOCOLS, default="fixed",
                   help="validation classes: one seeded random --val-fraction, or --folds folds of them")
    p.add_argument("--folds", type=_positive_int, help=f"kfold: K folds of the training classes (default {FOLDS})")
    p.add_argument("--search-folds", type=_positive_int,
                   help=f"kfold: the first N folds each trial trains and is scored on, one model per fold, "
                        f"score = mean validation R@1 (default {SEARCH_FOLDS}: all K would cost K times a fixed split)")
    p.add_argument("--batch-size", type=_positive_int, help="default per dataset")
    p.add_argument("--backbone", help="default per dataset")
    p.add_argument("--image-size", type=_positive_int, help="default per dataset")
    p.add_argument("--embedding-size", type=_positive_int, help="default per dataset")
    p.add_argument("--pretrained", action="store_true",
                   help="start the backbone from torchvision's ImageNet weights (downloaded once, before the trials)")
    p.add_argument("--warmup-epochs", type=_non_negative_int,
                   help="first epochs train only the embedding layer and the loss's parameters (default per dataset)")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction,
                   help="keep the backbone's BatchNorm statistics and affine parameters fixed (default per dataset)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="per-epoch lr schedule (default per dataset)")
    p.add_argument("--lr-step", type=_positive_int, help="step schedule: epochs between lr drops (default per dataset)")
    p.add_argument("--lr-gamma", type=_fraction, help="step schedule: lr factor at each drop (default per dataset)")
    p.add_argument("--grad-clip", type=_non_negative_float, default=10.0,
                   help="clip each gradient element to +-this (Proxy-Anchor's recipe); 0 disables")
    p.add_argument("--m-per-class", type=_non_negative_int,
                   help="images per class in a batch, 0 uniform (default: 4 for pair losses, 0 for proxy losses)")
    p.add_argument("--workers", type=_non_negative_int,
                   help="DataLoader processes per CPU trial that crop its training images "
                   "(default: --cpus-per-trial minus one)")
    p.add_argument("--cpus-per-trial", type=_positive_float, default=1.0)
    p.add_argument("--gpus-per-trial", type=_non_negative_float, default=0.0, help="fractions pack trials on a GPU")
    p.add_argument("--address", help="Ray address (e.g. auto); default starts a local Ray")
    p.add_argument("--storage-path", help="trial checkpoints: a directory every node mounts, or an s3:// / gs:// "
                   "URI (needed on a multi-node cluster; default: the run directory's ray/)")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard, on 127.0.0.1 only (local Ray)")
    p.add_argument("--seed", type=int, default=0, help="master seed: splits, proposals and training")
    p.add_argument("--out", type=Path, help="run directory (default runs/<loss>-<dataset>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    return p


class UsageError(ValueError):
    """Bad input found before any work started."""


def parse_losses(text: str) -> tuple[str, ...]:
    """--loss as the losses it names: one, `all`, or a comma-separated list of distinct known losses."""
    if text == ALL:
        return tuple(LOSS_CHOICES)
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in LOSS_CHOICES:
            raise UsageError(f"--loss: unknown loss {name!r}; the known losses are {', '.join(LOSS_CHOICES)} "
                             f"(or {ALL} for every one).")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"--loss names {', '.join(twice)} more than once; name each loss once.")
    return tuple(names)


def run_config(args: argparse.Namespace, argv: list[str]) -> RunConfig:
    """The command line as the run's typed settings, with the dataset's defaults; bad combinations are refused."""
    given = {k: v for k, v in vars(args).items() if k != "resume"}  # how this driver starts, not a setting
    losses = parse_losses(args.loss)
    # A tournament's trials and results carry their loss; its settings have no single loss.
    given |= {"loss": losses[0] if len(losses) == 1 else None, "losses": losses}
    if given["out"] is None:
        name = given["loss"] or "tournament"
        given["out"] = Path("runs") / f"{name}-{args.dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        return RunConfig.resolve(given | {"argv": argv}, recipe(args.dataset))
    except ValueError as err:
        raise UsageError(str(err)) from None


def check_args(cfg: RunConfig, resume: bool) -> None:
    """Refuse, before anything is computed, what the settings ask of this machine and --out, naming the fix."""
    if cfg.pretrained and cfg.backbone not in PRETRAINED_WEIGHTS:
        raise UsageError(f"--pretrained: backbone {cfg.backbone} has no ImageNet weights; choose --backbone from "
                         f"{sorted(PRETRAINED_WEIGHTS)} or drop --pretrained.")
    if recipe(cfg.dataset).needs_root:
        if not cfg.data_root:
            raise UsageError(f"--dataset {cfg.dataset} is read from disk: give --data-root PATH.")
        if not Path(cfg.data_root).expanduser().is_dir():
            raise UsageError(f"--data-root {cfg.data_root} is not a directory.")
    if resume and not (cfg.out / "config.json").exists():
        raise UsageError(f"--resume: {cfg.out} holds no run to continue (no config.json); give --out the "
                         "directory of the interrupted run.")
    check_execution(cfg)
    out = cfg.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"--out {out} cannot be written ({err.strerror}); choose a writable directory.") from err
    if (out / "config.json").exists() and not resume:
        ledger.refuse_if_tested(out / ledger.LEDGER_NAME)
        raise UsageError(f"{out} already holds an unfinished study: pass --resume to continue it, "
                         "or choose a new --out.")


def check_execution(cfg: RunConfig) -> None:
    """Refuse, before any work, resources and places Ray could never run the trials with."""
    gpus = cfg.gpus_per_trial
    if gpus > 1 and not float(gpus).is_integer():
        raise UsageError(f"--gpus-per-trial {gpus:g}: Ray packs fractions of one GPU; give a fraction below 1 "
                         "or a whole number of GPUs.")
    if cfg.dashboard and cfg.address:
        raise UsageError("--dashboard starts the dashboard of a local Ray; a cluster has its own "
                         "(ray dashboard cluster.yaml forwards it). Drop one of --dashboard and --address.")
    if not cfg.address:
        cpus = os.cpu_count() or 1
        if cfg.cpus_per_trial > cpus:
            raise UsageError(f"--cpus-per-trial {cfg.cpus_per_trial:g} exceeds this machine's {cpus} CPUs: no "
                             "trial could start. Lower it, or run on a cluster with --address.")
        if gpus > 0:
            import torch

            local = torch.cuda.device_count()
            if gpus > local:
                raise UsageError(f"--gpus-per-trial {gpus:g} but this machine has {local} CUDA GPUs: no trial "
                                 "could start. Use --gpus-per-trial 0, or run on a GPU cluster with --address.")
    if cfg.address or cfg.storage_path or cfg.dashboard:
        from trainables import ray_cluster

        try:
            if cfg.storage_path:
                ray_cluster.check_storage_path(cfg.storage_path)
            if cfg.dashboard:
                ray_cluster.check_dashboard()
            if cfg.address:
                ray_cluster.check_address(cfg.address)
        except ValueError as err:
            raise UsageError(str(err)) from None


def search_stage(run_dir: Path, cfg: RunConfig, folds: list[ClassSplit], echo: Any,
                 data: DMLDataset | None = None) -> pd.DataFrame:
    """Run (or finish) the study and write trials.parquet; the test classes are never opened.

    A study an earlier driver left unfinished is continued (tune_search.run_search): its finished
    trials are kept, interrupted ones continue from their last checkpoint, the rest are new. A
    tournament (several losses) runs every loss's study under one Tuner (tune_search.run_tournament).
    `data` is what trials train on (`trial_data`). A search that left nothing to select raises SearchFailed.
    """
    from trainables.trial import TrialSetup
    from trainables.tune_search import LossSearch, SearchSettings, experiment_location, run_search, run_tournament

    defaults = OptimiserDefaults(lr=cfg.lr)
    searched = folds[:cfg.search_folds or 1]
    setup = TrialSetup(loss=cfg.loss, dataset=cfg.dataset, data_root=cfg.data_root,
                       image_size=cfg.image_size, folds=tuple(searched), ks=cfg.ks,
                       fixed=cfg.train_fields() | {"epochs": cfg.max_epochs},
                       threads=max(1, int(cfg.cpus_per_trial)), data=data)
    settings = SearchSettings(trials=cfg.trials, max_epochs=cfg.max_epochs, grace_period=cfg.grace_period,
                              reduction_factor=cfg.reduction_factor, cpus_per_trial=cfg.cpus_per_trial,
                              gpus_per_trial=cfg.gpus_per_trial, seed=cfg.seed,
                              storage_path=cfg.storage_path, address=cfg.address, dashboard=cfg.dashboard)
    scored = f"mean validation R@1 over {len(searched)} of {len(folds)} folds" if len(folds) > 1 else "validation R@1"
    what = (f"{cfg.trials} trials of each of {len(cfg.losses)} losses, taking turns (each first: its paper's "
            "defaults; ASHA compares a trial with its own loss's only)" if cfg.tournament else
            f"{cfg.trials} trials of {cfg.loss} (first: the paper's defaults)")
    echo(f"search: {what}, up to {cfg.max_epochs} epochs each, scored by {scored}, ASHA grace {cfg.grace_period}, "
         f"reduction {cfg.reduction_factor}")
    if cfg.tournament:
        searches = [LossSearch(loss, define_by_run(loss, defaults), [default_config(loss, defaults)])
                    for loss in cfg.losses]
        run_tournament(run_dir, setup, searches, settings, echo)
    else:
        run_search(run_dir, setup, define_by_run(cfg.loss, defaults), [default_config(cfg.loss, defaults)],
                   settings, echo)
    trials = tables.run_trials(run_dir, cfg.losses, cfg.max_epochs)
    tables.write(trials, run_dir / "trials.parquet")
    check_selectable(trials, "/".join(experiment_location(run_dir, cfg.storage_path)))
    return trials


def trial_data(dataset: DMLDataset, echo: Any) -> DMLDataset | None:
    """The decoded training half trials and retrains receive (packed.py), read here once; None for data
    each worker builds in memory (glyphs). A missing or corrupt training image is named now, before any trial."""
    try:
        data = for_workers(dataset, echo=echo)
    except (ImageReadError, FileNotFoundError) as err:
        raise UsageError(f"{err}. Restore or repair the file, then run the command again.") from None
    return None if data is dataset else data


def run(cfg: RunConfig, resume: bool, echo: Any = print) -> int:
    """Drive the run in cfg.out (check_args made it) while holding its lock: one driver per run directory."""
    with runlock.held(cfg.out):
        return _drive(cfg, resume, echo)


def _drive(cfg: RunConfig, resume: bool, echo: Any) -> int:
    from results.report import REPORT_NAME, write_report  # matplotlib: loaded when a run gets this far, not for --help
    from results.tournament import print_standings, standings  # scipy: likewise

    run_dir = cfg.out
    ledger_path = run_dir / ledger.LEDGER_NAME
    recorded = ledger.read(ledger_path)
    if not resume:
        ledger.refuse_if_tested(ledger_path, recorded)
    elif recorded:  # --resume of a finished run: show what stands
        print_recorded(ledger_path, recorded, echo)
        if cfg.tournament:
            echo("\ntournament (Recall and MAP@R in %):")
            print_standings(standings(pd.read_parquet(run_dir / "trials.parquet"), ledger_frame(recorded), cfg.lr),
                            echo)
        if not (run_dir / REPORT_NAME).exists():
            echo(f"report: {write_report(run_dir)}")
        return 0
    started = time.perf_counter()
    dataset = open_dataset(cfg)  # a --data-root of another layout is refused before any download or note
    if cfg.pretrained:  # downloaded here, once, so parallel trials read the cache instead of racing for it
        cfg = dataclasses.replace(cfg, pretrained_weights=fetch_pretrained(cfg.backbone))
    elif cfg.warmup_epochs or cfg.freeze_bn:
        echo(f"note: warm-up and frozen BatchNorm are meant for a pretrained backbone, but {cfg.backbone} "
             "starts from random weights: add --pretrained, or --warmup-epochs 0 --no-freeze-bn")
    folds = validation_splits(dataset, cfg)
    split = folds[0]  # what the retrain needs: its fit + val classes are all the training classes
    held_out = (f"{len(split.fit)} fit / {len(split.val)} validation classes" if len(folds) == 1 else
                f"{len(folds)} folds of ~{len(split.val)} validation classes ({cfg.search_folds} searched)")
    searched = cfg.loss or f"a tournament of {len(cfg.losses)} losses ({', '.join(cfg.losses)})"
    echo(f"dmltune: {searched} on {cfg.dataset}: {held_out} (seed {cfg.seed}), "
         f"{len(dataset.test_classes)} test classes kept closed until the end")
    data = trial_data(dataset, echo)
    write_config(run_dir, cfg, dataset, folds, echo)

    trials = search_stage(run_dir, cfg, folds, echo, data)
    counts = trials["state"].value_counts().to_dict()
    echo(f"search done: {len(trials)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
         f"{int(trials['epochs'].sum())} trial-epochs")
    selected = select_per_loss(trials, cfg.top_k)
    if unselectable := [loss for loss in cfg.losses if loss not in set(selected[LOSS_KEY])]:
        echo(f"note: no trial of {', '.join(unselectable)} can be selected (every one failed, diverged or is "
             "unfinished): left out of the test stage")
    final = retrain_and_test(run_dir, cfg, dataset, folds, selected, echo)

    classes = (f"retrained on all {len(split.fit) + len(split.val)} training classes, tested once on "
               f"{len(dataset.test_classes)} test classes")
    if cfg.tournament:
        echo(f"\ntournament: each loss's best of {cfg.trials} trials by validation Recall@1, {classes} "
             "(Recall and MAP@R in %):")
        print_standings(standings(trials, ledger_frame(ledger.read(ledger_path)), cfg.lr), echo)
    else:
        echo(f"\nbest of {len(trials)} trials by validation Recall@1, {classes} (Recall in %):")
        print_final(final, list(cfg.ks), echo)
    echo(f"\nreport: {write_report(run_dir)}")
    echo(f"run directory: {run_dir}  (config.json, study.journal, study.db, trials.parquet, final/, final.parquet, "
         f"test_ledger.jsonl, ray/)  in {time.perf_counter() - started:.0f}s")
    return 0


def open_dataset(cfg: RunConfig) -> DMLDataset:
    """The run's dataset; a --data-root whose files do not have the dataset's layout is bad input, not a crash."""
    try:
        return build_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    except FileNotFoundError as err:  # the loader names the file it expected and the layout
        raise UsageError(f"--data-root {cfg.data_root}: {err}") from None


def validation_splits(dataset: DMLDataset, cfg: RunConfig) -> list[ClassSplit]:
    """The fixed split, or all K folds (the search trains on the first --search-folds of them)."""
    if cfg.protocol != "kfold":
        return [fixed_split(dataset.train_classes, cfg.val_fraction, cfg.seed)]
    try:
        return kfold_splits(dataset.train_classes, cfg.folds, cfg.seed)
    except ValueError as err:
        raise UsageError(f"--folds {cfg.folds} does not fit {cfg.dataset}: {err}") from None


def write_config(run_dir: Path, cfg: RunConfig, dataset: DMLDataset, folds: list[ClassSplit],
                 echo: Any = print) -> None:
    """config.json: the run's settings, versions, dataset fingerprint and every split's class ids.

    `--resume` needs the splits and the training half's data unchanged; the test half may have been
    repaired (a corrupt image that stopped the test stage), which the ledger then records.
    """
    path = run_dir / "config.json"
    payload = {"command": cfg.to_json(), **provenance(dataset, folds)}
    if path.exists():
        before = json.loads(path.read_text())
        old, new = before["dataset"], payload["dataset"]
        if "train_sha256_16" not in old:
            raise UsageError(f"{path} was written by an older dmltune, whose data fingerprint this one cannot "
                             "compare; finish that run with the version that started it, or start a new --out.")
        searched = tuple(before["command"].get("losses") or [before["command"]["loss"]])
        if searched != cfg.losses:
            raise UsageError(f"{path} is a run of --loss {','.join(searched)}; --resume needs the same --loss.")
        if before["split"] != payload["split"] or old["train_sha256_16"] != new["train_sha256_16"]:
            raise UsageError(f"{path} was written for other data or splits; --resume needs the same --dataset, "
                             "--data-root, --seed, --protocol, --folds and --val-fraction.")
        if old["sha256_16"] != new["sha256_16"]:
            echo("note: the test half's files changed since this run began; the search, selection and retrain "
                 "used only the training half, which is unchanged. The ledger records the data as tested.")
        return
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        cfg = run_config(args, argv)
        check_args(cfg, args.resume)
        return run(cfg, args.resume)
    except (UsageError, DataTooLarge, ledger.TestAlreadyRecorded, runlock.RunLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (TestStageFailed, SearchFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
