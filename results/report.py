"""report.html: what a run did, what it found and what it cost, in one self-contained file.

    python -m results.report runs/<name>      # (re)write runs/<name>/report.html

search.py writes it at the end of every run. It reads only the run directory (config.json,
the study, final.parquet, test_ledger.jsonl), so it also describes an interrupted or untested run.
Plots are matplotlib PNGs inlined as base64: the file can be mailed or archived on its own.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from results.report_data import ReportError, Run, load
from results.report_figures import curves_figure, history_figure, png, slices_figure
from results.report_sections import (cost_table, defaults_paragraph, final_table, importance_section,
                                     protocol_paragraph, provenance_section, unscored_note)
from trainables.atomic import write_atomic

REPORT_NAME = "report.html"

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1060px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.93em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f2f2f2; } img { max-width: 100%; display: block; margin: 0.6em 0; }
.note { background: #fff7e0; border-left: 4px solid #e0b000; padding: 0.4em 0.8em; }
.params { display: inline-block; min-width: 13em; }
.caption { color: #555; font-size: 0.92em; } .sub { color: #555; margin-top: 0; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def render(run: Run) -> str:
    cmd = run.cmd
    sections = [
        ("Protocol", protocol_paragraph(run)),
        ("Result", final_table(run) + defaults_paragraph(run)),
        ("Optimisation history", png(history_figure(run), "optimisation history") + unscored_note(run)),
        ("Validation curves", png(curves_figure(run), "validation curves")),
        ("Searched parameters", png(slices, "parameter slices") if (slices := slices_figure(run))
         else "<p class=note>No searched parameters.</p>"),
        ("Hyperparameter importance", importance_section(run)),
        ("Cost", cost_table(run)),
        ("Provenance", provenance_section(run.config, run.cmd)),
    ]
    return page(f"dmltune: {cmd.loss} on {cmd.dataset}", run.dir, sections)


def page(title: str, run_dir: Path, sections: list[tuple[str, str]]) -> str:
    """A self-contained HTML page: the title, the run directory, each (heading, HTML) section."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    body = "".join(f"<h2>{html.escape(heading)}</h2>{content}" for heading, content in sections)
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=sub>Run directory <code>{html.escape(str(run_dir))}</code>, report written {now}</p>"
            f"{body}</body></html>")


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report.html (atomically) and return its path; a tournament's is render_tournament's."""
    config_path = Path(run_dir) / "config.json"
    command = json.loads(config_path.read_text()).get("command", {}) if config_path.exists() else {}
    if len(command.get("losses") or []) > 1:
        from results.tournament_report import render_tournament  # it builds on this module

        text = render_tournament(Path(run_dir))
    else:
        text = render(load(Path(run_dir)))
    path = Path(run_dir) / REPORT_NAME
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m results.report", description="(Re)write a run's report.html.")
    parser.add_argument("run_dir", type=Path, help="a run directory (search.py --out)")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.run_dir))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
