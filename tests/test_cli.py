"""Bad input is refused before any work, with a message that names the problem and the fix."""
from __future__ import annotations

import pytest

import search


def _fails(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        search.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_unknown_loss_lists_the_valid_ones(capsys, tmp_path) -> None:
    assert search.main(["--loss", "arcface", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "arcface" in err
    assert all(name in err for name in ("proxy_anchor", "softtriple", "ms", "all"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("losses,named", [("ms,arcface,triplet", "'arcface'"), ("ms,triplet,ms", "ms more than once"),
                                          ("ms,,triplet", "''")])
def test_a_tournament_list_with_an_unknown_or_repeated_loss_is_refused_in_one_line(losses, named, capsys,
                                                                                   tmp_path) -> None:
    assert search.main(["--loss", losses, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --loss") and err.count("\n") == 1 and named in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value", [("--trials", "0"), ("--max-epochs", "-3"), ("--final-epochs", "0"),
                                        ("--seeds", "0"), ("--top-k", "-1")])
def test_non_positive_budgets_are_refused_before_any_work(flag: str, value: str, capsys, tmp_path) -> None:
    out = tmp_path / "run"
    err = _fails(["--loss", "softtriple", flag, value, "--out", str(out)], capsys)
    assert flag in err and "at least 1" in err
    assert not out.exists()


def test_an_out_that_cannot_be_written_is_reported_before_training(capsys, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = search.main(["--loss", "softtriple", "--out", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be written" in err and str(blocker / "run") in err


def test_top_k_above_trials_is_refused(capsys, tmp_path) -> None:
    code = search.main(["--loss", "ms", "--trials", "2", "--top-k", "3", "--out", str(tmp_path / "r")])
    assert code == 2 and "--top-k 3 exceeds --trials 2" in capsys.readouterr().err


def test_a_disk_dataset_without_data_root_is_refused(capsys, tmp_path) -> None:
    choices = search.build_parser()._option_string_actions["--dataset"].choices
    disk = [d for d in choices if d != "glyphs"]
    if not disk:
        pytest.skip("no disk datasets registered")
    code = search.main(["--loss", "ms", "--dataset", disk[0], "--out", str(tmp_path / "r")])
    assert code == 2 and "--data-root" in capsys.readouterr().err
