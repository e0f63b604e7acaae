from __future__ import annotations

import pytest

import search
from results import ledger
from trainables.config import SELECTION_METRIC


def test_entries_append_in_order_and_survive_rereading(tmp_path) -> None:
    path = tmp_path / ledger.LEDGER_NAME
    for i in range(3):
        with ledger.locked(path) as before:
            assert len(before) == i
            ledger.append(path, {"seed": i})
    assert [e["seed"] for e in ledger.read(path)] == [0, 1, 2]


def test_second_look_message_names_the_ledger_and_the_reason(tmp_path) -> None:
    path = tmp_path / ledger.LEDGER_NAME
    err = ledger.TestAlreadyRecorded(path, [{"seed": 0}])
    assert str(path) in str(err) and "already evaluated" in str(err) and "new --out" in str(err)


RECORDED = {"time": "2026-01-01T00:00:00+00:00", "seed": 0, "config_hash": "abc", "epochs": 3,
            "params": {"margin": 0.1}, "metrics": {"recall@1": 0.6543},
            "selection": {"rank": 1, "trial": 0, SELECTION_METRIC: 0.5}}


def test_the_refusal_passes_an_untested_study_and_shows_a_tested_ones_result(tmp_path) -> None:
    path = tmp_path / ledger.LEDGER_NAME
    ledger.refuse_if_tested(path)  # no ledger yet: nothing to refuse
    with ledger.locked(path):
        ledger.append(path, RECORDED)
    with pytest.raises(ledger.TestAlreadyRecorded, match="65.43"):
        ledger.refuse_if_tested(path)
    ledger.refuse_if_tested(path, [])  # entries read under the lock are what counts


def test_the_cli_refuses_a_tested_run_without_resume_before_any_work(tmp_path, capsys) -> None:
    (tmp_path / "config.json").write_text("{}")
    with ledger.locked(tmp_path / ledger.LEDGER_NAME):
        ledger.append(tmp_path / ledger.LEDGER_NAME, RECORDED)
    assert search.main(["--loss", "ms", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already evaluated on 2026-01-01" in err and "65.43" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", ledger.LEDGER_NAME, "test_ledger.lock"]
