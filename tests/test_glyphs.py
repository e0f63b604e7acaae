"""The embedded glyphs dataset: size, determinism, cache, class halves, homoglyphs, test guard."""
from __future__ import annotations

import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.data import base, glyphs
from trainables.data.base import InMemoryImages
from trainables.data.glyphs import GlyphArrays, GlyphsDataset, render_glyphs


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> GlyphArrays:
    return render_glyphs(seed=0, cache_dir=tmp_path_factory.mktemp("glyphs-cache"))


def _equal(a: GlyphArrays, b: GlyphArrays) -> bool:
    return (a.images.tobytes() == b.images.tobytes() and np.array_equal(a.labels, b.labels)
            and np.array_equal(a.font_ids, b.font_ids) and a.class_names == b.class_names
            and a.fonts == b.fonts)


def _rms_distances(x: np.ndarray) -> np.ndarray:
    """Pairwise root-mean-square differences of the rows of x, inf on the diagonal."""
    x = x.astype(np.float64)
    sq = (x * x).sum(axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0) / x.shape[1])
    np.fill_diagonal(d, np.inf)
    return d


def test_size_and_layout(default: GlyphArrays) -> None:
    n_classes = len(default.class_names)
    assert n_classes >= 200
    assert len(set(default.class_names)) == n_classes
    assert default.images.dtype == np.uint8 and default.images.shape[1:] == (32, 32)
    assert default.labels.dtype == np.int64 and default.font_ids.dtype == np.int64
    assert len(default.images) == len(default.labels) == len(default.font_ids)
    counts = np.bincount(default.labels, minlength=n_classes)
    assert counts.min() >= 40 and (counts == 40).all()
    assert set(np.unique(default.labels)) == set(range(n_classes))
    # Fonts are the main within-class variation: every class uses many of them.
    fonts_per_class = [len(np.unique(default.font_ids[default.labels == c])) for c in range(n_classes)]
    assert min(fonts_per_class) >= glyphs.MIN_FONTS
    assert len(default.fonts) >= 12 and all(f.endswith(".ttf") for f in default.fonts)
    assert not any("LastResort" in f for f in default.fonts)


def test_scripts_in_both_halves(default: GlyphArrays) -> None:
    half = len(default.class_names) // 2
    for names in (default.class_names[:half], default.class_names[half:]):
        scripts = {unicodedata.name(ch).split()[0] for ch in names}
        assert {"LATIN", "GREEK", "CYRILLIC", "DIGIT"} <= scripts


def test_images_are_not_blank(default: GlyphArrays) -> None:
    # A 3x3 mean averages the noise away; a glyph leaves a bright spot well above the background.
    x = torch.from_numpy(default.images).float().unsqueeze(1)
    smooth = torch.nn.functional.avg_pool2d(x, 3, stride=1).flatten(1)
    contrast = smooth.max(dim=1).values - smooth.median(dim=1).values
    assert contrast.min().item() > 40


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = render_glyphs(seed=3, images_per_class=4, cache_dir=tmp_path / "a")
    glyphs._catalogue.cache_clear()  # rebuild the class list too
    b = render_glyphs(seed=3, images_per_class=4, cache_dir=tmp_path / "b")
    c = render_glyphs(seed=4, images_per_class=4, cache_dir=tmp_path / "c")
    assert _equal(a, b)
    assert a.images.tobytes() != c.images.tobytes()
    # The classes belong to the dataset, not to the run: same list and order for every seed.
    assert c.class_names == a.class_names and np.array_equal(c.labels, a.labels)


def test_class_list_independent_of_image_size(default: GlyphArrays, tmp_path: Path) -> None:
    small = render_glyphs(seed=0, image_size=24, images_per_class=2, cache_dir=tmp_path)
    assert small.images.shape[1:] == (24, 24)
    assert small.class_names == default.class_names


def test_second_call_loads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.perf_counter()
    first = render_glyphs(seed=1, images_per_class=3, cache_dir=tmp_path)
    files = list(tmp_path.glob("glyphs-*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))

    def refuse(*args: object, **kwargs: object) -> GlyphArrays:
        raise AssertionError("the renderer ran although the cache holds these arrays")

    monkeypatch.setattr(glyphs, "_generate", refuse)
    assert _equal(render_glyphs(seed=1, images_per_class=3, cache_dir=tmp_path), first)
    # Any other parameter is another cache entry.
    with pytest.raises(AssertionError, match="renderer ran"):
        render_glyphs(seed=2, images_per_class=3, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="renderer ran"):
        render_glyphs(seed=1, images_per_class=4, cache_dir=tmp_path)
    assert time.perf_counter() - start < 60


def test_torn_cache_file_is_regenerated(tmp_path: Path) -> None:
    first = render_glyphs(seed=1, images_per_class=2, cache_dir=tmp_path)
    (path,) = tmp_path.glob("glyphs-*.npz")
    path.write_bytes(path.read_bytes()[:100])
    assert _equal(render_glyphs(seed=1, images_per_class=2, cache_dir=tmp_path), first)
    assert np.load(path)["images"].shape == first.images.shape  # rewritten whole


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMLTUNE_CACHE", str(tmp_path / "env"))
    render_glyphs(seed=0, images_per_class=1)
    assert len(list((tmp_path / "env").glob("glyphs-*.npz"))) == 1


def test_no_homoglyph_classes(default: GlyphArrays) -> None:
    names = set(default.class_names)
    # Latin/Greek/Cyrillic look-alikes: at most one of each group is a class.
    for group in ("AΑА", "BΒВ", "EΕЕ", "HΗН", "KΚК", "MΜМ", "OΟО", "PΡР", "TΤТ", "XΧХ",
                  "aа", "cс", "eе", "oοо", "pр", "xх", "yу", "-‐"):
        assert len(names & set(group)) <= 1, group
    # And no two classes draw the same in any font they share (canonical, unjittered rendering).
    catalogue = glyphs._catalogue(str(glyphs._font_dir()))
    assert catalogue.chars == default.class_names
    for f in range(len(catalogue.fonts)):
        chars = [ch for ch in catalogue.chars if (ch, f) in catalogue.probe_masters]
        x = np.stack([glyphs._downsample(catalogue.probe_masters[ch, f]).ravel() for ch in chars])
        d = _rms_distances(x)
        assert d.min() >= glyphs._HOMOGLYPH_TOLERANCE, catalogue.fonts[f]


def test_class_means_differ_in_reference_font(default: GlyphArrays) -> None:
    ref = default.fonts.index("DejaVuSans.ttf")
    means = {}
    for c in range(len(default.class_names)):
        pick = (default.labels == c) & (default.font_ids == ref)
        if pick.any():
            means[c] = default.images[pick].astype(np.float32).mean(axis=0).ravel() / 255
    assert len(means) >= 0.9 * len(default.class_names)
    d = _rms_distances(np.stack(list(means.values())))
    assert d.min() > 0.02


def test_halves_are_class_disjoint_and_cover_everything(tmp_path: Path) -> None:
    ds = GlyphsDataset(images_per_class=2, cache_dir=tmp_path)
    n = len(ds.class_names)
    assert ds.name == "glyphs" and ds.channels == 1
    assert ds.train_classes.dtype == np.int64 and ds.test_classes.dtype == np.int64
    assert np.array_equal(ds.train_classes, np.arange(n // 2))
    assert np.array_equal(ds.test_classes, np.arange(n // 2, n))
    assert not np.intersect1d(ds.train_classes, ds.test_classes).size
    assert np.array_equal(np.union1d(ds.train_classes, ds.test_classes), np.arange(n))


def test_test_half_is_guarded(tmp_path: Path) -> None:
    ds = GlyphsDataset(images_per_class=2, cache_dir=tmp_path)
    with pytest.raises(base.TestAccessError):
        ds.subset(ds.test_classes[:2])
    with pytest.raises(base.TestAccessError):
        ds.subset([int(ds.train_classes[0]), int(ds.test_classes[-1])])
    with ds.test_access():
        test = ds.subset(ds.test_classes[:2])
    assert isinstance(test, InMemoryImages) and len(test) == 4
    assert set(test.labels.tolist()) == set(ds.test_classes[:2].tolist())
    with pytest.raises(base.TestAccessError):  # closed again after the test stage
        ds.subset(ds.test_classes[:2])


def test_subset_returns_in_memory_images(tmp_path: Path) -> None:
    ds = GlyphsDataset(image_size=24, images_per_class=3, cache_dir=tmp_path)
    sub = ds.subset(ds.train_classes[:5], train=True)
    assert isinstance(sub, InMemoryImages) and len(sub) == 15
    assert sub.images.dtype == torch.uint8 and tuple(sub.images.shape) == (15, 1, 24, 24)
    assert sub.labels.dtype == torch.int64
    assert sorted(set(sub.labels.tolist())) == ds.train_classes[:5].tolist()
    image, label = sub[0]
    assert image.dtype == torch.float32 and image.shape == (1, 24, 24)
    assert 0.0 <= image.min() and image.max() <= 1.0 and label == int(sub.labels[0])


def test_fingerprint(tmp_path: Path) -> None:
    a = GlyphsDataset(seed=0, images_per_class=2, cache_dir=tmp_path)
    b = GlyphsDataset(seed=0, images_per_class=2, cache_dir=tmp_path)
    c = GlyphsDataset(seed=1, images_per_class=2, cache_dir=tmp_path)
    parts = a.fingerprint_parts()
    assert parts["classes"] == len(a.class_names) and parts["seed"] == 0
    assert parts["image_size"] == 32 and parts["images_per_class"] == 2
    assert len(parts["images_sha256"]) == 64
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint()["sha256_16"] != c.fingerprint()["sha256_16"]


def test_rejects_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        render_glyphs(seed=-1, cache_dir=tmp_path)
    with pytest.raises(ValueError):
        render_glyphs(images_per_class=0, cache_dir=tmp_path)
