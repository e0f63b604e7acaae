"""The decoded data trials receive (packed.py) and its augmentation (augment.py), checked against the
official per-image PIL transforms they replace; all on the CPU, including the float path CUDA takes."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision import transforms as T

import search
from data_fixtures import corrupt, write_cub, write_jpeg
from trainables.config import TrainConfig
from trainables.data import build_dataset
from trainables.data import packed
from trainables.data.augment import crop_boxes, normalize, resize_crops, short_side
from trainables.data import base
from trainables.data.packed import DataTooLarge, PackedImages, check_fits, for_workers
from trainables.trainer import Trainer

SIZE = 32
TRAIN, TEST = (1, 2, 3, 4), (101, 102)


@pytest.fixture
def cub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A CUB fixture of larger, non-square images (so Resize really resizes), and its own cache dir."""
    monkeypatch.setenv("DMLTUNE_CACHE", str(tmp_path / "cache"))
    written = write_cub(tmp_path / "cub", classes=TRAIN + TEST, per_class=4)
    for k, rel in enumerate(written.relpaths):  # portrait and landscape, as CUB has both
        write_jpeg(written.root / rel, seed=k, size=(75, 50) if k % 3 else (44, 90))
    return build_dataset("cub", written.root, SIZE)


def test_the_evaluation_view_equals_the_pil_path(cub) -> None:
    """Resize(size * 256 / 224) + CenterCrop + Normalize: identical pixels (tolerance: float rounding, 1e-5)."""
    files, shipped = cub.subset(cub.train_classes), for_workers(cub).subset(cub.train_classes)
    assert len(files) == len(shipped) == 16
    for i in range(len(files)):
        expected, label = files[i]
        got, got_label = shipped[i]
        assert got_label == label and got.shape == expected.shape == (3, SIZE, SIZE)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_trials_receive_no_test_class_image(cub) -> None:
    shipped = for_workers(cub)
    assert set(cub.labels[shipped.held].tolist()) == set(TRAIN)
    train_pixels = sum(math.prod(np.asarray(im.size)) for im in _pil_resized(cub, shipped.held)) * 3
    assert shipped.pixels.data.nbytes == train_pixels  # nothing else is in the buffer
    with pytest.raises(base.TestAccessError):
        shipped.subset(cub.test_classes)
    with shipped.test_access(), pytest.raises(LookupError, match="not shipped"):
        shipped.subset(cub.test_classes)[0]  # unlocked or not, its images are not there


def test_the_test_stage_gets_the_test_half_alone(cub) -> None:
    shipped = for_workers(cub, test=True)
    assert set(cub.labels[shipped.held].tolist()) == set(TEST)
    with shipped.test_access():
        torch.testing.assert_close(shipped.subset(cub.test_classes)[0][0], _eval_view(cub, shipped.held[0]),
                                   atol=1e-5, rtol=0)


def test_a_second_run_reads_the_cache_without_decoding(cub, monkeypatch) -> None:
    first = for_workers(cub)
    again = build_dataset("cub", cub.root, SIZE)  # a new driver: a new dataset object
    monkeypatch.setattr(packed, "decode", lambda *a, **k: pytest.fail("decoded again"))
    cached = for_workers(again)
    np.testing.assert_array_equal(np.asarray(cached.pixels.data), np.asarray(first.pixels.data))
    assert isinstance(cached.pixels.data.base, np.memmap)  # mapped from the cache file, not read into memory
    with pytest.raises(pytest.fail.Exception, match="decoded again"):  # another image size is another key
        for_workers(build_dataset("cub", cub.root, SIZE + 8))


def test_crop_boxes_follow_torchvisions_random_resized_crop() -> None:
    """Scale, aspect ratio and position of 20,000 boxes against torchvision's own sampler (two-sample KS)."""
    n = 20_000
    for h, w in ((256, 341), (256, 256), (256, 1000)):  # the last often takes torchvision's fallback
        ours = crop_boxes(torch.full((n,), h), torch.full((n,), w), torch.Generator().manual_seed(0)).double()
        torch.manual_seed(1)
        ref = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(1, h, w), [0.08, 1.0], [3 / 4, 4 / 3])
                            for _ in range(n)], dtype=torch.float64)
        assert ((ours[:, 0] + ours[:, 2]) <= h).all() and ((ours[:, 1] + ours[:, 3]) <= w).all()
        for name, a, b in (("scale", ours[:, 2] * ours[:, 3] / (h * w), ref[:, 2] * ref[:, 3] / (h * w)),
                           ("log ratio", torch.log(ours[:, 3] / ours[:, 2]), torch.log(ref[:, 3] / ref[:, 2])),
                           ("top", ours[:, 0] / h, ref[:, 0] / h), ("left", ours[:, 1] / w, ref[:, 1] / w)):
            assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3, f"{h}x{w}: {name} differs"
        assert torch.quantile(ours[:, 2] * ours[:, 3] / (h * w), 0.01) < 0.09  # the 0.08 floor is reached


def test_training_batches_flip_half_the_time_and_draw_from_the_generator(cub) -> None:
    train = for_workers(cub).subset(cub.train_classes, train=True)
    assert isinstance(train, PackedImages)
    one = train.batch(list(range(16)), generator=torch.Generator().manual_seed(3))
    two = train.batch(list(range(16)), generator=torch.Generator().manual_seed(3))
    assert one.dtype == torch.uint8 and one.shape == (16, 3, SIZE, SIZE) and torch.equal(one, two)
    # Flip rate: a 1-pixel-wide crop of a left-right ramp is bright on the left exactly when flipped.
    ramp = torch.arange(64, dtype=torch.uint8).repeat(64, 1)[..., None].repeat(1, 1, 3) * 4
    flips = torch.rand(4000, generator=torch.Generator().manual_seed(0)) < 0.5
    out = resize_crops([ramp] * 4000, 8, flips)
    mirrored = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert torch.equal(mirrored, flips) and abs(flips.double().mean() - 0.5) < 0.03


def test_the_cuda_float_resize_matches_the_cpu_uint8_resize() -> None:
    """CUDA has no uint8 interpolation: the float path it takes must give the same pixels within one level."""
    crops = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(h))
             for h, w in ((40, 57), (224, 224), (300, 200), (19, 23))]
    flips = torch.tensor([True, False, True, False])
    fast = resize_crops(crops, 32, flips, uint8_kernel=True)
    slow = resize_crops(crops, 32, flips, uint8_kernel=False)
    assert (fast.int() - slow.int()).abs().max() <= 1
    reference = torch.stack([T.functional.resize(c.permute(2, 0, 1), [32, 32], antialias=True) for c in crops])
    assert (fast.int() - reference.flip(-1).where(flips.view(-1, 1, 1, 1), reference).int()).abs().max() <= 1


def test_normalize_is_to_tensor_then_imagenet_normalize() -> None:
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    expected = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(x.float() / 255)
    torch.testing.assert_close(normalize(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("workers", [0, 1])
def test_the_trainer_trains_and_scores_on_decoded_data(cub, workers: int) -> None:
    shipped = for_workers(cub)
    cfg = TrainConfig.from_params("proxy_anchor", {"margin": 0.1, "alpha": 32}, backbone="resnet18",
                                  embedding_size=8, batch_size=8, epochs=1, num_workers=workers)
    trainer = Trainer(cfg, shipped.subset(cub.train_classes, train=True))
    assert math.isfinite(trainer.train_epoch())
    assert 0 <= trainer.evaluate(shipped.subset(cub.train_classes), [1])["recall@1"] <= 1


def test_data_larger_than_the_object_store_is_refused_with_sizes_and_the_fix() -> None:
    check_fits(800, {"head": 1000.0, "gpu-1": 2000.0}, "the cub data")  # 80 % of the smallest store fits
    with pytest.raises(DataTooLarge) as info:
        check_fits(int(1.6e9), {"head": 8e9, "gpu-1": 1.5e9}, "the cub data")
    message = str(info.value)
    assert "1.60 GB" in message and "gpu-1" in message and "1.50 GB" in message
    assert "--object-store-memory" in message and "--image-size" in message and "2.0 GB" in message


def test_a_corrupt_training_image_is_named_before_any_trial(cub, tmp_path, capsys) -> None:
    bad = cub.root / cub.relpaths[int(np.flatnonzero(np.isin(cub.labels, TRAIN))[5])]
    corrupt(bad)
    out = tmp_path / "run"
    argv = ["--loss", "proxy_anchor", "--dataset", "cub", "--data-root", str(cub.root), "--image-size", str(SIZE),
            "--out", str(out)]
    assert search.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read image") and str(bad) in err and len(err.splitlines()) == 1
    assert not (out / "study.db").exists() and not (out / "config.json").exists()
    bad.unlink()
    assert search.main(argv) == 2
    err = capsys.readouterr().err
    assert "missing" in err and str(bad) in err and "Traceback" not in err


def _pil_resized(dataset, items: np.ndarray) -> list:
    from trainables.data.images import load_rgb

    return [T.Resize(short_side(SIZE))(load_rgb(dataset.root / dataset.relpaths[i])) for i in items]


def _eval_view(dataset, item: int) -> torch.Tensor:
    from trainables.data.images import eval_transform, load_rgb

    return eval_transform(SIZE)(load_rgb(dataset.root / dataset.relpaths[item]))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs it)")


@needs_cuda
def test_cuda_batches_are_the_cpu_batches_within_one_level(cub) -> None:
    """Same generator, same boxes: the GPU's float resize gives the CPU's uint8 pixels within one level."""
    train = for_workers(cub).subset(cub.train_classes, train=True)
    idx = list(range(len(train)))
    on_gpu = train.batch(idx, "cuda", torch.Generator().manual_seed(5))
    on_cpu = train.batch(idx, "cpu", torch.Generator().manual_seed(5))
    assert on_gpu.device.type == "cuda" and (on_gpu.cpu().int() - on_cpu.int()).abs().max() <= 1


@needs_cuda
def test_the_trainer_trains_on_cuda_from_decoded_data(cub) -> None:
    shipped = for_workers(cub)
    cfg = TrainConfig.from_params("proxy_anchor", {"margin": 0.1, "alpha": 32}, backbone="resnet18",
                                  embedding_size=8, batch_size=8, epochs=1)
    trainer = Trainer(cfg, shipped.subset(cub.train_classes, train=True), device="cuda")
    assert math.isfinite(trainer.train_epoch())
    assert 0 <= trainer.evaluate(shipped.subset(cub.train_classes), [1])["recall@1"] <= 1
