from __future__ import annotations

from results import ledger


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
