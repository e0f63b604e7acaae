"""Bad input for the cluster side is refused before any work, fast, with the bad value and the fix."""
from __future__ import annotations

import socket
import time

import pytest
import torch

import search
from trainables.ray_cluster import check_storage_path, ray_init_kwargs


def _refused(argv: list[str], capsys, tmp_path) -> str:
    """Run the CLI; it must exit 2 without creating the run directory, and return its error."""
    out = tmp_path / "run"
    assert search.main(["--loss", "ms", "--out", str(out), *argv]) == 2
    assert not out.exists()
    return capsys.readouterr().err


def test_an_unknown_dataset_lists_the_known_ones(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--loss", "ms", "--dataset", "imagenet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "imagenet" in err and "cub" in err and "glyphs" in err


def test_a_data_root_that_does_not_exist_is_named(capsys, tmp_path) -> None:
    err = _refused(["--dataset", "cub", "--data-root", str(tmp_path / "nowhere")], capsys, tmp_path)
    assert str(tmp_path / "nowhere") in err and "not a directory" in err


def test_a_storage_path_that_cannot_be_written_is_refused(capsys, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _refused(["--storage-path", str(blocker / "ckpt")], capsys, tmp_path)
    assert str(blocker / "ckpt") in err and "cannot be written" in err and "s3://" in err


def test_a_storage_uri_is_left_to_ray() -> None:
    check_storage_path("s3://some-bucket/dmltune")  # no credentials here: reaching it is the cluster's job


def test_an_unreachable_address_is_refused_in_seconds(capsys, tmp_path) -> None:
    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    err = _refused(["--address", f"127.0.0.1:{port}"], capsys, tmp_path)
    assert time.monotonic() - started < 10  # ray.init would wait minutes
    assert f"127.0.0.1:{port}" in err and "nothing answers" in err


def test_an_address_that_is_not_host_port_is_refused(capsys, tmp_path) -> None:
    err = _refused(["--address", "my-cluster"], capsys, tmp_path)
    assert "my-cluster" in err and "HOST:PORT" in err


def test_a_ray_client_address_is_refused_naming_the_way_that_works(capsys, tmp_path) -> None:
    err = _refused(["--address", "ray://head:10001"], capsys, tmp_path)
    assert "ray://head:10001" in err and "head node" in err and "--address auto" in err


@pytest.mark.parametrize("argv,expected", [
    pytest.param(["--gpus-per-trial", "0.5"], "no trial could start", id="gpus-without-gpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    pytest.param(["--gpus-per-trial", "1.5"], "fractions of one GPU", id="gpu-fraction-above-one"),
    pytest.param(["--cpus-per-trial", "4096"], "exceeds this machine's", id="cpus-beyond-machine"),
    pytest.param(["--dashboard", "--address", "auto"], "Drop one of --dashboard and --address",
                 id="dashboard-on-cluster"),
    pytest.param(["--resume"], "holds no run to continue", id="resume-without-run"),
])
def test_conflicting_flags_are_refused(argv, expected, capsys, tmp_path) -> None:
    assert expected in _refused(argv, capsys, tmp_path)


def test_ray_starts_without_a_dashboard_unless_asked_and_then_on_localhost_only() -> None:
    assert ray_init_kwargs(None)["include_dashboard"] is False
    asked = ray_init_kwargs(None, dashboard=True)
    assert asked["include_dashboard"] is True and asked["dashboard_host"] == "127.0.0.1"


def test_a_dashboard_without_its_packages_is_refused_with_the_install_line(capsys, tmp_path) -> None:
    try:
        import ray.dashboard.optional_deps  # noqa: F401
        pytest.skip("ray[default] is installed: the dashboard can start")
    except ImportError:
        pass
    assert "pip install 'ray[default]'" in _refused(["--dashboard"], capsys, tmp_path)


def test_a_data_root_of_another_layout_is_one_line_naming_the_missing_file(capsys, tmp_path) -> None:
    root = tmp_path / "not-cub"
    (root / "images").mkdir(parents=True)  # a folder of images, without CUB's list files
    assert search.main(["--loss", "ms", "--dataset", "cub", "--data-root", str(root),
                        "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data-root {root}: ") and len(err.strip().splitlines()) == 1
    assert "images.txt" in err and "Layout:" in err and "DESIGN" not in err
    assert not (tmp_path / "run" / "config.json").exists()
