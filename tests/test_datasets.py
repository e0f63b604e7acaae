"""The on-disk benchmarks (CUB, Cars196, SOP, In-Shop) on tiny fixtures in their exact formats, and the backbones.

One contract suite runs over the dataset registry (names -> fixture writers); the dataset-specific
tests check each split rule; the error tests check that a bad root, list file or image is named.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_fixtures import LIST_FILES, WRITERS, Written, corrupt, write_cars, write_cub, write_inshop, write_sop
from trainables.data import DATASETS, build_dataset, recipe
from trainables.data import base
from trainables.data.images import IMAGENET_MEAN, ImageFiles, ImageReadError
from trainables.models import BACKBONES, build_model, pretrained_weights

REAL = sorted(WRITERS)
SIZE = 32  # image_size for the fixtures: keeps transforms cheap


@pytest.fixture(params=REAL)
def written(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Written]:
    return request.param, WRITERS[request.param](tmp_path / request.param)


def _classes(written: Written, test: bool) -> set[int]:
    """The fixture's classes of one half, by the real splits' rules."""
    labels = set(written.labels)
    split = {"cub": 100, "cars": 98, "sop": 11318}
    name = written.root.name
    if name == "inshop":
        test_items = {written.labels[i] for i in written.query + written.gallery}
        return test_items if test else labels - test_items
    return {c for c in labels if (c > split[name]) == test}


# --- contract over the registry -------------------------------------------------------------------------


def test_registry_has_real_benchmarks_with_recipes() -> None:
    assert set(REAL) < set(DATASETS) and "glyphs" in DATASETS
    for name in REAL:
        rec = recipe(name)
        assert rec.needs_root and rec.backbone in BACKBONES and rec.image_size == 224 and rec.embedding_size == 512
    assert recipe("cub").ks == recipe("cars").ks == (1, 2, 4, 8)
    assert recipe("sop").ks == (1, 10, 100, 1000) and recipe("inshop").ks == (1, 10, 20, 30, 40, 50)
    assert recipe("cub").lr == recipe("cars").lr == 1e-4 and recipe("sop").lr == recipe("inshop").lr == 6e-4


def test_items_labels_and_halves(written: tuple[str, Written]) -> None:
    name, w = written
    ds = build_dataset(name, w.root, image_size=SIZE)
    assert ds.name == name and ds.channels == 3
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == w.labels
    assert [str(ds.root / p) for p in ds.relpaths] == [str(w.root / p) for p in w.relpaths]
    assert set(ds.train_classes.tolist()) == _classes(w, test=False)
    assert set(ds.test_classes.tolist()) == _classes(w, test=True)
    assert not np.intersect1d(ds.train_classes, ds.test_classes).size


def test_train_subset_yields_normalised_rgb_with_labels(written: tuple[str, Written]) -> None:
    name, w = written
    ds = build_dataset(name, w.root, image_size=SIZE)
    for train in (True, False):
        sub = ds.subset(ds.train_classes, train=train)
        labels = np.asarray(sub.labels)
        assert isinstance(sub, ImageFiles) and len(sub) == len(labels) == sum(c in _classes(w, False) for c in w.labels)
        x, y = sub[0]
        assert x.dtype == torch.float32 and x.shape == (3, SIZE, SIZE) and y == labels[0]
        assert x.min() < 0 < x.max()  # ImageNet-normalised, not [0, 1]
    # Evaluation views are deterministic; training views are random crops.
    ev = ds.subset(ds.train_classes[:1])
    assert torch.equal(ev[0][0], ev[0][0])


def test_test_half_is_guarded(written: tuple[str, Written]) -> None:
    name, w = written
    ds = build_dataset(name, w.root, image_size=SIZE)
    with pytest.raises(base.TestAccessError):
        ds.subset(ds.test_classes[:1])
    with pytest.raises(base.TestAccessError):
        ds.subset(np.concatenate([ds.train_classes, ds.test_classes[-1:]]), train=True)
    with ds.test_access():
        assert len(ds.subset(ds.test_classes)) == sum(c in _classes(w, True) for c in w.labels)
    with pytest.raises(base.TestAccessError):
        ds.subset(ds.test_classes)


def test_fingerprint_is_stable_and_sees_file_changes(written: tuple[str, Written]) -> None:
    name, w = written
    first = build_dataset(name, w.root, image_size=SIZE).fingerprint()
    assert first == build_dataset(name, w.root, image_size=SIZE).fingerprint()
    assert first["items"] == len(w.labels)
    path = w.root / w.relpaths[-1]
    path.write_bytes(path.read_bytes() + b"\0")  # one byte more: the stat-based size changes
    assert build_dataset(name, w.root, image_size=SIZE).fingerprint()["sha256_16"] != first["sha256_16"]


def test_a_repaired_test_image_changes_the_data_but_not_what_the_search_saw(written: tuple[str, Written]) -> None:
    name, w = written
    first = build_dataset(name, w.root, image_size=SIZE).fingerprint()
    half = {i: c in _classes(w, test=True) for i, c in enumerate(w.labels)}
    for test in (True, False):
        path = w.root / w.relpaths[next(i for i, t in half.items() if t == test)]
        path.write_bytes(path.read_bytes() + b"\0")
        now = build_dataset(name, w.root, image_size=SIZE).fingerprint()
        assert now["sha256_16"] != first["sha256_16"]
        # A test image's change leaves the search side alone; a training image's does not.
        assert (now["train_sha256_16"] == first["train_sha256_16"]) == test
        first = now


def test_training_never_opens_test_images(written: tuple[str, Written]) -> None:
    """docs/protocol.md: with every test-class image corrupt, the training half and the fingerprint still work."""
    name, w = written
    for p in w.paths_of(_classes(w, test=True)):
        corrupt(p)
    ds = build_dataset(name, w.root, image_size=SIZE)
    ds.fingerprint()
    for train in (True, False):
        sub = ds.subset(ds.train_classes, train=train)
        assert all(sub[i][0].shape == (3, SIZE, SIZE) for i in range(len(sub)))
    with ds.test_access(), pytest.raises(ImageReadError, match="cannot read image"):
        ds.subset(ds.test_classes)[0]


# --- dataset-specific rules ----------------------------------------------------------------------------


def test_cub_splits_by_class_and_ignores_train_test_split(tmp_path: Path) -> None:
    w = write_cub(tmp_path)
    ds = build_dataset("cub", tmp_path, image_size=SIZE)
    assert ds.train_classes.tolist() == [1, 2] and ds.test_classes.tolist() == [101, 102]
    # Each label matches the NNN of its images/NNN.Name folder.
    assert all(int(p.split("/")[1][:3]) == c for p, c in zip(ds.relpaths, ds.labels.tolist()))
    # A greyscale JPEG comes out as 3 channels.
    assert ds.subset([1])[1][0].shape == (3, SIZE, SIZE)
    assert len(w.labels) == 12


def test_cub_mismatched_id_files_are_an_error(tmp_path: Path) -> None:
    write_cub(tmp_path)
    lines = (tmp_path / "image_class_labels.txt").read_text().splitlines()
    (tmp_path / "image_class_labels.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="different image ids"):
        build_dataset("cub", tmp_path)


def test_cars_reads_the_mat_struct_and_ignores_test_field(tmp_path: Path) -> None:
    w = write_cars(tmp_path)
    ds = build_dataset("cars", tmp_path, image_size=SIZE)
    assert ds.relpaths == w.relpaths and ds.labels.tolist() == w.labels
    assert ds.train_classes.tolist() == [1, 2] and ds.test_classes.tolist() == [99, 100]


def test_cars_mat_without_annotations_is_an_error(tmp_path: Path) -> None:
    from scipy.io import savemat

    savemat(tmp_path / "cars_annos.mat", {"something_else": np.zeros(3)})
    with pytest.raises(ValueError, match="annotations"):
        build_dataset("cars", tmp_path)


def test_sop_halves_come_from_the_two_files(tmp_path: Path) -> None:
    write_sop(tmp_path)
    ds = build_dataset("sop", tmp_path, image_size=SIZE)
    assert ds.train_classes.tolist() == [1, 2, 3] and ds.test_classes.tolist() == [11319, 11320]
    assert ds.test_query is None and ds.test_gallery is None


def test_sop_class_in_both_files_is_an_error(tmp_path: Path) -> None:
    write_sop(tmp_path, train_classes=(1, 2), test_classes=(2, 11319))
    with pytest.raises(ValueError, match="both the train and the test half"):
        build_dataset("sop", tmp_path)


@pytest.mark.parametrize("image_dir", ["Img", ""])
def test_inshop_query_gallery_and_item_ids(tmp_path: Path, image_dir: str) -> None:
    w = write_inshop(tmp_path, image_dir=image_dir)
    ds = build_dataset("inshop", tmp_path, image_size=SIZE)
    assert ds.train_classes.tolist() == [2, 7] and ds.test_classes.tolist() == [12, 13]
    assert ds.test_query.tolist() == w.query and ds.test_gallery.tolist() == w.gallery
    assert set(ds.labels[ds.test_query]) == set(ds.labels[ds.test_gallery]) == {12, 13}
    assert ds.relpaths[0] == (f"{image_dir}/" if image_dir else "") + "img/MEN/Denim/id_00000002/01_1_front.jpg"
    with pytest.raises(base.TestAccessError):
        ds.items(ds.test_query)
    with ds.test_access():
        q = ds.items(ds.test_query)
        assert np.asarray(q.labels).tolist() == [w.labels[i] for i in w.query]
        assert q[0][0].shape == (3, SIZE, SIZE)


def test_inshop_item_in_train_and_query_is_an_error(tmp_path: Path) -> None:
    write_inshop(tmp_path)
    f = tmp_path / "Eval" / "list_eval_partition.txt"
    f.write_text(f.read_text().replace("id_00000012     query", "id_00000002     query", 1))
    with pytest.raises(ValueError, match="both the train and the test half"):
        build_dataset("inshop", tmp_path)


def test_inshop_truncated_partition_file_is_an_error(tmp_path: Path) -> None:
    write_inshop(tmp_path)
    f = tmp_path / "Eval" / "list_eval_partition.txt"
    f.write_text("\n".join(f.read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(ValueError, match="line 1 says 16 rows, but the file has 13"):
        build_dataset("inshop", tmp_path)


# --- errors that name the file -------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL)
def test_missing_root_names_it(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        build_dataset(name, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="--data-root"):
        build_dataset(name, None)


def test_missing_list_file_names_it_and_the_layout(written: tuple[str, Written]) -> None:
    name, w = written
    (w.root / LIST_FILES[name]).unlink()
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(name, w.root)
    assert str(w.root / LIST_FILES[name]) in str(err.value) and "Layout:" in str(err.value)


def test_missing_inshop_images_name_the_expected_place(tmp_path: Path) -> None:
    write_inshop(tmp_path)
    shutil.rmtree(tmp_path / "Img")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "Img" / "img")):
        build_dataset("inshop", tmp_path)


def test_missing_image_is_named_by_fingerprint_and_loading(tmp_path: Path) -> None:
    w = write_cub(tmp_path)
    missing = tmp_path / w.relpaths[0]
    missing.unlink()
    ds = build_dataset("cub", tmp_path, image_size=SIZE)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ds.fingerprint()
    with pytest.raises(ImageReadError, match=str(missing)):
        ds.subset([1])[0]


def test_corrupt_image_error_names_file_through_dataloader_workers(tmp_path: Path) -> None:
    """A bad file in a worker is an error naming the file in the main process, not a hang."""
    w = write_cub(tmp_path)
    bad = tmp_path / w.relpaths[4]
    corrupt(bad)
    ds = build_dataset("cub", tmp_path, image_size=SIZE)
    sub = ds.subset(ds.train_classes, train=True)
    with pytest.raises(ImageReadError, match=str(bad)):
        sub[4]
    # timeout: were a worker to hang, the loader would raise "timed out" instead of ImageReadError.
    batches = iter(DataLoader(sub, batch_size=2, num_workers=2, timeout=60))
    try:
        with pytest.raises(ImageReadError, match=str(bad)):
            for _ in batches:
                pass
    finally:
        batches._shutdown_workers()  # now, rather than when garbage collection gets to it


def test_truncated_image_is_named(tmp_path: Path) -> None:
    w = write_sop(tmp_path)
    bad = tmp_path / w.relpaths[0]
    bad.write_bytes(bad.read_bytes()[: 200])
    ds = build_dataset("sop", tmp_path, image_size=SIZE)
    with pytest.raises(ImageReadError, match=str(bad)):
        ds.subset(ds.train_classes)[0]


def test_transform_uses_imagenet_statistics(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "grey.png"
    Image.new("RGB", (40, 40), (124, 116, 104)).save(path)  # ~ the ImageNet mean colour
    from trainables.data.images import eval_transform

    x = ImageFiles([str(path)], np.array([5]), eval_transform(SIZE))[0][0]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.zeros(3), atol=0.02)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)


# --- backbones -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "googlenet"])
def test_torchvision_backbones_embed_l2_normalised(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model(backbone, 3, 16).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not any(k.startswith(("features.fc", "features.aux", "features.avgpool")) for k in model.state_dict())
    with pytest.raises(ValueError, match="in_channels=1"):
        build_model(backbone, 1, 16)


def test_pretrained_is_only_for_torchvision_backbones() -> None:
    assert type(pretrained_weights("resnet50")).__name__ == "ResNet50_Weights"  # the enum; nothing downloaded
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("glyphcnn", 1, 8, pretrained=True)
    assert build_model("glyphcnn", 1, 8)(torch.rand(2, 1, 32, 32)).shape == (2, 8)  # old call sites still work
