"""The report's sections as HTML: protocol, result, importance, cost and provenance, in words and tables."""
from __future__ import annotations

import html
import math
from typing import Any

import optuna
import pandas as pd

from results import ledger, tables
from results.console import param_text, pm_text, recall_ks
from results.report_data import Run
from results.report_figures import importance_figure, png
from results.select import ranked
from trainables.config import SELECTION_METRIC
from trainables.study import DIVERGED
from trainables.run_config import AUTO, RunConfig

# fANOVA on fewer full-budget trials than this is noise (a forest fitted to a handful of points).
MIN_IMPORTANCE_TRIALS = 4
# Tested metrics other than Recall@K, as the final table heads them (any other is shown by its own name).
METRIC_NAMES = {"map@r": "MAP@R", "r_precision": "R-Precision", "nmi": "NMI"}


def unscored_note(run: Run) -> str:
    """The trials no plot places: no validation score, and not failed (failed ones stand at 0 in the history)."""
    trials = run.trials
    missing = trials[trials[f"best_{SELECTION_METRIC}"].isna() & (trials["shown"] != "failed")]
    if missing.empty:
        return ""
    listed = ", ".join(f"{n} ({state})" for n, state in zip(missing["number"], missing["shown"]))
    return f"<p class=caption>Not drawn: trial(s) {listed}, which had reported no validation score.</p>"


def importances(study: optuna.Study, complete: int) -> dict[str, float] | str:
    """fANOVA importances over the `complete` full-budget trials, or why there are none (a sentence)."""
    if complete < MIN_IMPORTANCE_TRIALS:
        return (f"{complete} trial(s) ran the full budget, and importance over fewer than {MIN_IMPORTANCE_TRIALS} "
                "is noise; pruned trials are left out because their scores come from shorter budgets. "
                "Run more --trials to get it.")
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as err:  # e.g. every complete trial has the same score
        return f"optuna.importance failed on this study: {err}."
    return dict(found) or "the full-budget trials share no searched parameter."


def importance_section(run: Run) -> str:
    complete = int(run.trials["state"].eq("complete").sum())  # the trials Optuna's evaluator reads: COMPLETE ones
    found = importances(run.study, complete)
    if isinstance(found, str):
        return f"<p class=note>Not computed: {html.escape(found)}</p>"
    return (png(importance_figure(found, complete), "hyperparameter importance")
            + f"<p class=caption>optuna.importance with fANOVA (a random forest, seed 0) over the {complete} trials "
              "that ran the full budget; with few trials the shares are rough.</p>")


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _pm(values: pd.Series) -> str:
    """A metric in % as mean ± sample std over seeds (the mean alone for one seed)."""
    return pm_text(100 * values.to_numpy(), "&nbsp;±&nbsp;")


def _classes(ids: list[int]) -> str:
    shown = ", ".join(str(c) for c in ids[:12])
    return shown + (f", … ({len(ids)} in all)" if len(ids) > 12 else "")


def _validation_sentence(cmd: RunConfig, split: dict[str, Any]) -> tuple[str, int]:
    """How validation classes were held out (fixed split or k folds), and the number of training classes."""
    if "folds" in split:  # --protocol kfold
        folds = split["folds"]
        train = len(folds[0]["fit"]) + len(folds[0]["val"])
        return (f"The training classes were dealt into <b>{len(folds)} validation folds</b> (seed {cmd.seed}, "
                f"~{len(folds[0]['val'])} classes each); a trial trained one model per fold on the first "
                f"{cmd.search_folds} "
                "folds, each on the other folds' classes, and was scored by their mean validation Recall@1."), train
    fit, val = split["fit"], split["val"]
    return (f"A random {100 * cmd.val_fraction:.0f}% of the training classes (seed {cmd.seed}) became "
            f"<b>validation classes</b> ({len(val)}: {_classes(val)}); the other {len(fit)} <b>fit classes</b> "
            "trained every trial."), len(fit) + len(val)


def protocol_paragraph(run: Run) -> str:
    cmd, split = run.cmd, run.config["split"]
    # The data as tested: the ledger's fingerprint, which differs from config.json's if a test image was repaired.
    data = run.entries[0]["dataset"] if run.entries else run.config["dataset"]
    validation, train = _validation_sentence(cmd, split)
    test = split["test"]
    rule = ("each config's best validation epoch (<code>--final-epochs auto</code>)" if cmd.final_epochs == AUTO
            else f"{cmd.final_epochs} epochs (fixed in advance)")
    configs = int((run.trials["shown"] != "rerun").sum())  # a rerun trial's config ran again as another trial
    tested = (f"tested once on {html.escape(run.entries[0]['time'])}, {len(run.entries)} ledger entries"
              if run.entries else "<b>not tested yet</b>: the test classes have not been opened")
    return (
        f"<p><b>{html.escape(cmd.dataset)}</b> ({data['items']} images, fingerprint "
        f"<code>{html.escape(data['sha256_16'])}</code>) splits by class: {train} training classes, "
        f"{len(test)} test classes. {validation} <b>Search</b>: {configs} configs of "
        f"<b>{html.escape(cmd.loss)}</b> proposed by Optuna TPE (the paper's defaults first), trained as Ray "
        f"Tune trials for up to {cmd.max_epochs} epochs and scored by validation Recall@1 after every epoch; "
        f"ASHA (grace {cmd.grace_period}, reduction {cmd.reduction_factor}) stopped weak trials and Optuna "
        f"recorded them as pruned. <b>Select</b>: the top {cmd.top_k} by validation Recall@1, full-budget "
        f"trials first. <b>Retrain</b> each on all {train} training classes for {rule} with "
        f"{cmd.seeds} seed(s). <b>Test</b>: the {len(test)} test classes ({_classes(test)}) were opened only "
        f"by the test stage; {tested}.</p>"
    )


def defaults_paragraph(run: Run) -> str:
    """How the paper's defaults did on validation (and on test when they were among the tested configs)."""
    if run.defaults_trial is None:
        return "<p>The paper's defaults were not among the trials (a resumed study adds them only at its start).</p>"
    best = f"best_{SELECTION_METRIC}"
    rows = run.trials.set_index("number")
    t, number = rows.loc[run.defaults_trial], run.defaults_trial
    state, epochs = t["shown"], t["epochs"]
    if state == "diverged":  # the trainer's reason names the epoch and the config
        return (f"<p>The <b>paper's defaults</b> (trial {number}) diverged, so they were never selected: "
                f"{html.escape(str(t[DIVERGED]).rstrip('.'))}.</p>")
    if pd.isna(t[best]):
        why = ("had not finished an epoch when this report was written" if state == "unfinished"
               else f"{state} before their first epoch")
        return f"<p>The paper's defaults (trial {number}) {why}: no validation score.</p>"
    how = {"complete": "ran the full budget", "pruned": f"were pruned by ASHA after epoch {epochs}",
           "failed": f"failed after epoch {epochs}",
           "unfinished": f"had run {epochs} epoch(s) when this report was written"}[state]
    order = list(ranked(run.trials)["number"])
    rank = (f"rank {order.index(number) + 1} of {len(order)} in the selection order (full-budget trials first)"
            if number in order else "not ranked: only complete and pruned trials are selected")
    text = (f"<p>The <b>paper's defaults</b> (trial {number}) reached validation Recall@1 "
            f"<b>{_pct(t[best])}</b> at epoch {int(t['best_epoch'])} and {how}: {rank}. ")
    if run.selected:
        top = rows.loc[run.selected[0]]
        if run.defaults_trial in run.selected:
            text += f"They were retrained and tested as config #{run.selected.index(run.defaults_trial) + 1}. "
        else:
            text += (f"The selected config #1 (trial {run.selected[0]}) scored {_pct(top[best])} "
                     f"({100 * (top[best] - t[best]):+.2f} points); the defaults were not retrained, so their test "
                     "score is unknown: testing them as well would be a second look at the test set. ")
    return text + "</p>"


def final_table(run: Run) -> str:
    """Validation (search) against test (retrain) per tested config, mean ± std over seeds."""
    frame = run.tested
    if frame is None:
        return "<p class=note>No test result yet: the run stopped before its test stage.</p>"
    ks = recall_ks(frame)
    others = [c.removeprefix("test_") for c in frame.columns
              if c.startswith("test_") and not c.startswith("test_recall@")]
    metrics = [f"test_recall@{k}" for k in ks] + [f"test_{m}" for m in others]
    head = ["config", "trial", "parameters", "retrain epochs", "seeds", "val R@1 (search)"]
    head += [f"test R@{k}" for k in ks] + [f"test {METRIC_NAMES.get(m, m)}" for m in others]
    body = []
    for rank, group in frame.groupby("config_rank"):
        first = group.iloc[0]
        label = f"#{rank}" + (" (paper defaults)" if int(first["trial_number"]) == run.defaults_trial else "")
        cells = [label, str(first["trial_number"]), "<span class=params>" + ", ".join(
                     html.escape(param_text(k, v)) for k, v in tables.row_params(first).items()) + "</span>", str(first["epochs"]), str(len(group)), _pct(first[f"best_{SELECTION_METRIC}"])]
        cells += [_pm(group[col]) for col in metrics]
        body.append(cells)
    top = frame[frame["config_rank"] == 1]
    seeds = f"{len(top)} seeds" if len(top) > 1 else "1 seed"
    headline = (f"<p><b>Result: test Recall@1 {_pm(top['test_recall@1'])}</b> ({seeds}) for config #1 "
                f"(trial {top['trial_number'].iloc[0]}), chosen by its validation Recall@1 of "
                f"{_pct(top[f'best_{SELECTION_METRIC}'].iloc[0])} in the search.</p>")
    return (headline + html_table(head, body)
            + "<p class=caption>Recall in %. val R@1: the search trial's best epoch on the validation classes "
              "(trained on the fit classes only). test: retrained on all training classes, mean ± sample std "
              "over seeds. Config #1 is the result; the others show whether the validation ranking holds on "
              "the test classes and must not be chosen among by their test score.</p>")


def duration(seconds: float) -> str:
    """Seconds as a person reads them (s, min or h); shared with the tournament's report section."""
    if math.isnan(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def cost_table(run: Run) -> str:
    """Trial-epochs, time and the epochs ASHA saved against running every trial to the full budget.

    Savings and the time per epoch come from the trials that ended as ASHA decided (complete or pruned):
    the epochs failed, diverged and unfinished trials never ran were not saved by ASHA, and an unfinished
    trial has no duration yet.
    """
    trials, cmd = run.trials, run.cmd
    ran = int(trials["epochs"].sum())
    normal = trials[trials["shown"].isin(["complete", "pruned"])]
    normal_ran = int(normal["epochs"].sum())
    full = len(normal) * cmd.max_epochs
    trial_seconds = float(trials["seconds"].sum())
    finished = [t for t in run.study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    wall = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds() \
        if finished else float("nan")
    per_epoch = float(normal["seconds"].sum()) / normal_ran if normal_ran else float("nan")
    states = ", ".join(f"{n} {s}" for s, n in trials["shown"].value_counts().items())
    rows = [
        ["trials", f"{len(trials)} ({states})"],
        ["trial-epochs run", f"{ran}"],
        ["trial-epochs if every complete or pruned trial ran the full budget",
         f"{full} ({len(normal)} × {cmd.max_epochs})"],
        ["epochs ASHA saved", f"{full - normal_ran} ({100 * (full - normal_ran) / max(full, 1):.0f}%; ≈ "
                              f"{duration((full - normal_ran) * per_epoch)} of trial time at {per_epoch:.1f} s per "
                              "epoch)"],
        ["search wall-clock (first trial start to last trial end)", duration(wall)],
        ["trial time (sum over trials)", duration(trial_seconds)],
        ["CPU core-hours reserved by trials", f"{trial_seconds * cmd.cpus_per_trial / 3600:.3g} "
                                              f"({cmd.cpus_per_trial:g} per trial)"],
        ["GPU-hours reserved by trials", f"{trial_seconds * cmd.gpus_per_trial / 3600:.3g} "
                                         f"({cmd.gpus_per_trial:g} per trial)"],
    ]
    if run.final is not None:
        device = run.entries[0].get("device", "") if run.entries else ""
        rows.append(["retrain (sum over configs × seeds)",
                     f"{duration(float(run.final['train_seconds'].sum()))}, {int(run.final['epochs'].sum())} epochs"
                     + (f" on {html.escape(device)}" if device else "")])
    return (html_table(["", ""], rows, header=False)
            + "<p class=caption>Trial time is what each trial ran on its worker (Tune's time_total_s), summed "
              "over drivers when the run was resumed; the wall-clock includes any pause between drivers. "
              "Reserved hours multiply trial time by --cpus-per-trial / --gpus-per-trial.</p>")


def provenance_section(config: dict[str, Any], cmd: RunConfig) -> str:
    """Command, code revision, versions and class ids from config.json (`config`; `cmd` its command)."""
    code = config.get("code") or {}
    revision = (f"{code['commit'][:12]}{' (uncommitted changes)' if code.get('dirty') else ''}"
                if code else "not a git checkout")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(config.get("versions", {}).items()))
    split = config["split"]
    named = {f"fold {i + 1} validation": f["val"] for i, f in enumerate(split.get("folds", []))} | {
        name: ids for name, ids in split.items() if name != "folds"}
    ids = "".join(f"<p><b>{html.escape(name)}</b> ({len(v)}): {', '.join(map(str, v))}</p>"
                  for name, v in named.items())
    argv = " ".join(cmd.argv)
    return (f"<p>Command: <code>python search.py {html.escape(argv)}</code><br>Code revision: "
            f"<code>{html.escape(revision)}</code><br>Versions: {html.escape(versions)}</p>"
            f"<details><summary>Class ids of every split</summary>{ids}</details>"
            f"<p>Each test evaluation is in <code>{ledger.LEDGER_NAME}</code> with its config, hash, seed, "
            "dataset fingerprint and these class ids; the study is <code>study.journal</code>, copied to "
            "<code>study.db</code> when the search ends (<code>optuna-dashboard sqlite:///study.db</code> "
            "opens it).</p>")


def html_table(head: list[str], body: list[list[str]], header: bool = True) -> str:
    """A table of plain-text headers and raw-HTML cells: escaping what a cell shows is the caller's job."""
    thead = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" if header else ""
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
    return f"<table>{thead}{rows}</table>"


