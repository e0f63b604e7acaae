"""dmltune: choose a deep-metric-learning loss's hyperparameters without looking at the test classes.

    python search.py --loss softtriple

split the training classes into fit/validation classes -> search (Optuna TPE in Ray Tune, ASHA
on validation Recall@1) -> select the best configs -> retrain them on all training classes ->
test once -> write the run directory (DESIGN §1-§3).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from results import ledger, tables
from results.final import print_final, print_recorded, retrain_and_test
from results.provenance import code_revision, versions
from spaces import SPACES, OptimiserDefaults, default_config, define_by_run
from trainables.config import fixed_fields
from trainables.data import DATASETS, build_dataset, recipe
from trainables.data.base import DMLDataset
from trainables.data.splits import ClassSplit, fixed_split
from trainables.losses import LOSSES

LOSS_CHOICES = sorted(set(LOSSES) & set(SPACES))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, but got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, but got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, but got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--loss", required=True, choices=LOSS_CHOICES, help="loss whose hyperparameters are searched")
    p.add_argument("--dataset", default="glyphs", choices=sorted(DATASETS),
                   help="glyphs is embedded (generated, no download)")
    p.add_argument("--data-root", help="dataset folder for datasets read from disk (DESIGN §8)")
    p.add_argument("--trials", type=_positive_int, default=8, help="number of Optuna/Ray trials")
    p.add_argument("--max-epochs", type=_positive_int, default=10, help="search budget per trial (ASHA max_t)")
    p.add_argument("--grace-period", type=_positive_int, default=1, help="ASHA: epochs before a trial may be stopped")
    p.add_argument("--reduction-factor", type=_positive_int, default=3, help="ASHA: keep 1/this of trials per rung")
    p.add_argument("--final-epochs", type=_positive_int, help="retrain epochs (default: --max-epochs)")
    p.add_argument("--top-k", type=_positive_int, default=1, help="configs to retrain and test")
    p.add_argument("--seeds", type=_positive_int, default=1, help="retrain seeds per config")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of training classes held out")
    p.add_argument("--batch-size", type=_positive_int, help="default per dataset")
    p.add_argument("--backbone", help="default per dataset")
    p.add_argument("--image-size", type=_positive_int, help="default per dataset")
    p.add_argument("--embedding-size", type=_positive_int, help="default per dataset")
    p.add_argument("--cpus-per-trial", type=_positive_float, default=1.0)
    p.add_argument("--gpus-per-trial", type=_non_negative_float, default=0.0, help="fractions pack trials on a GPU")
    p.add_argument("--address", help="Ray address (e.g. auto); default starts a local Ray")
    p.add_argument("--seed", type=int, default=0, help="master seed: splits, proposals and training")
    p.add_argument("--out", type=Path, help="run directory (default runs/<loss>-<dataset>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    return p


class UsageError(ValueError):
    """Bad input found before any work started."""


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad input before anything is computed, naming the problem and the fix."""
    if not 0 < args.val_fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), but got {args.val_fraction}.")
    if args.top_k > args.trials:
        raise UsageError(f"--top-k {args.top_k} exceeds --trials {args.trials}: there are not that many configs.")
    if args.grace_period > args.max_epochs:
        raise UsageError(f"--grace-period {args.grace_period} exceeds --max-epochs {args.max_epochs}.")
    if recipe(args.dataset).needs_root:
        if not args.data_root:
            raise UsageError(f"--dataset {args.dataset} is read from disk: give --data-root PATH.")
        if not Path(args.data_root).expanduser().is_dir():
            raise UsageError(f"--data-root {args.data_root} is not a directory.")
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"--out {out} cannot be written ({err.strerror}); choose a writable directory.") from err
    if (out / "config.json").exists() and not args.resume and not ledger.read(out / ledger.LEDGER_NAME):
        raise UsageError(f"{out} already holds an unfinished study: pass --resume to continue it, "
                         "or choose a new --out.")


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Fill per-dataset defaults into the command line: this is what config.json records."""
    rec = recipe(args.dataset)
    resolved = vars(args) | {
        "backbone": args.backbone or rec.backbone, "image_size": args.image_size or rec.image_size,
        "embedding_size": args.embedding_size or rec.embedding_size, "batch_size": args.batch_size or rec.batch_size,
        "final_epochs": args.final_epochs or args.max_epochs, "lr": rec.lr, "ks": list(rec.ks),
        "out": str(args.out), "protocol": "fixed",
    }
    return resolved


def search_stage(run_dir: Path, cfg: dict[str, Any], split: ClassSplit, echo: Any) -> pd.DataFrame:
    """Run (or finish) the study and write trials.parquet; the test classes are never opened."""
    from trainables.ray_tune import SearchSettings, TrialSetup, init_ray, run_search

    defaults = OptimiserDefaults(lr=cfg["lr"])
    setup = TrialSetup(loss=cfg["loss"], dataset=cfg["dataset"], data_root=cfg["data_root"],
                       image_size=cfg["image_size"], fit_classes=split.fit, val_classes=split.val,
                       ks=tuple(cfg["ks"]), fixed=fixed_fields(cfg) | {"epochs": cfg["max_epochs"]},
                       threads=max(1, int(cfg["cpus_per_trial"])))
    done = 0
    if (run_dir / "study.db").exists():
        done = finished_trials(run_dir)
    remaining = cfg["trials"] - done
    if remaining > 0:
        init_ray(cfg["address"])
        settings = SearchSettings(trials=remaining, max_epochs=cfg["max_epochs"], grace_period=cfg["grace_period"],
                                  reduction_factor=cfg["reduction_factor"], cpus_per_trial=cfg["cpus_per_trial"],
                                  gpus_per_trial=cfg["gpus_per_trial"], seed=cfg["seed"] + done)
        first = [default_config(cfg["loss"], defaults)] if done == 0 else []
        echo(f"search: {remaining} trials of {cfg['loss']} (first: the paper's defaults), "
             f"up to {cfg['max_epochs']} epochs each, ASHA grace {cfg['grace_period']}, "
             f"reduction {cfg['reduction_factor']}")
        run_search(run_dir, setup, define_by_run(cfg["loss"], defaults), first, settings, echo)
    trials = tables.trials_frame(tables.load_study(run_dir), cfg["max_epochs"])
    tables.write(trials, run_dir / "trials.parquet")
    return trials


def finished_trials(run_dir: Path) -> int:
    """Trials an interrupted study already finished; trials it left running are marked failed."""
    import optuna

    study = tables.load_study(run_dir)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def run(args: argparse.Namespace, argv: list[str], echo: Any = print) -> int:
    run_dir: Path = args.out
    recorded = ledger.read(run_dir / ledger.LEDGER_NAME)
    if recorded:
        print_recorded(run_dir, recorded, echo)
        return 0
    cfg = resolve(args) | {"argv": argv}
    started = time.perf_counter()
    dataset = build_dataset(cfg["dataset"], cfg["data_root"], cfg["image_size"])
    split = fixed_split(dataset.train_classes, cfg["val_fraction"], cfg["seed"])
    echo(f"dmltune: {cfg['loss']} on {cfg['dataset']}: {len(split.fit)} fit / {len(split.val)} validation "
         f"classes (seed {cfg['seed']}), {len(dataset.test_classes)} test classes kept closed until the end")
    write_config(run_dir, cfg, dataset, split)

    trials = search_stage(run_dir, cfg, split, echo)
    counts = trials["state"].value_counts().to_dict()
    echo(f"search done: {len(trials)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
         f"{int(trials['epochs'].sum())} trial-epochs")
    selected = tables.select_top(trials, cfg["top_k"])
    final = retrain_and_test(run_dir, cfg, dataset, split, selected, echo)

    echo(f"\nbest of {len(trials)} trials by validation Recall@1, retrained on all {len(split.fit) + len(split.val)} "
         f"training classes, tested once on {len(dataset.test_classes)} test classes (Recall in %):")
    print_final(final, cfg["ks"], echo)
    echo(f"\nrun directory: {run_dir}  (config.json, study.db, trials.parquet, final.parquet, "
         f"test_ledger.jsonl, ray/)  in {time.perf_counter() - started:.0f}s")
    return 0


def write_config(run_dir: Path, cfg: dict[str, Any], dataset: DMLDataset, split: ClassSplit) -> None:
    """config.json: the resolved command line, versions, dataset fingerprint and every split's class ids."""
    path = run_dir / "config.json"
    payload = {"command": cfg, "versions": versions(), "code": code_revision(),
               "dataset": dataset.fingerprint(),
               "split": split.to_dict() | {"test": [int(c) for c in dataset.test_classes]}}
    if path.exists():
        before = json.loads(path.read_text())
        if before["split"] != payload["split"] or before["dataset"] != payload["dataset"]:
            raise UsageError(f"{path} was written for other data or splits; --resume needs the same "
                             "--dataset, --data-root, --seed and --val-fraction.")
        return
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = Path("runs") / f"{args.loss}-{args.dataset}-{stamp}"
    try:
        check_args(args)
        return run(args, argv)
    except (UsageError, ledger.TestAlreadyRecorded) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
