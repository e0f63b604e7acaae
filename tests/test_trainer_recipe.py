"""The papers' training recipe in the trainer (docs/datasets.md): warm-up, frozen BatchNorm, lr schedules,
clipping, pretrained weights, worker processes, and the CUDA-only speed-ups' selection, all on CPU."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import search
from data_fixtures import write_cub
from trainables.config import TrainConfig
from trainables.run_config import RunConfig
from trainables.data import build_dataset
from trainables.data.base import InMemoryImages
from trainables.models import fetch_pretrained
from trainables.trainer import Trainer, autocast_dtype, lr_factor, memory_format

ST = {"margin": 0.01, "scale": 20.0, "gamma": 0.1, "tau": 0.2}
PA = {"margin": 0.1, "alpha": 32.0}


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)  # the machine is shared; these models are too small to gain from more


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**({"loss": "softtriple", "loss_params": ST, "lr": 1e-2, "proxy_lr": 1e-1, "epochs": 2,
                           "batch_size": 16, "embedding_size": 8} | kw))


def _trainer(blobs, **kw) -> Trainer:
    return Trainer(_cfg(**kw), blobs.subset(blobs.train_classes, train=True))


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module, names: list[str]) -> list[bool]:
    after = module.state_dict()
    return [not torch.equal(before[n], after[n]) for n in names]


def test_warmup_trains_only_the_embedding_and_loss_parameters_then_the_backbone_too(blobs) -> None:
    trainer = _trainer(blobs, warmup_epochs=1)
    backbone = [n for n, _ in trainer.model.features.named_parameters()]
    head = [n for n, _ in trainer.model.embedding.named_parameters()]
    before, before_loss = _snapshot(trainer.model.features), _snapshot(trainer.model.embedding)
    proxies = trainer.loss.fc.detach().clone()
    trainer.train_epoch()
    assert not any(_changed(before, trainer.model.features, backbone))
    assert all(_changed(before_loss, trainer.model.embedding, head))
    assert not torch.equal(proxies, trainer.loss.fc)
    trainer.train_epoch()
    assert all(_changed(before, trainer.model.features, backbone))


def test_freeze_bn_keeps_backbone_batchnorm_statistics_and_affine_parameters(blobs) -> None:
    frozen, free = _trainer(blobs, freeze_bn=True), _trainer(blobs)
    bn = [n for n, m in frozen.model.features.named_modules() if isinstance(m, nn.BatchNorm2d)]
    bn_state = [f"{m}.{k}" for m in bn for k in ("weight", "bias", "running_mean", "running_var")]
    convs = [f"{n}.weight" for n, m in frozen.model.features.named_modules() if isinstance(m, nn.Conv2d)]
    assert bn and convs
    modes = []
    for m in frozen.model.features.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda mod, inp, out: modes.append(mod.training))
    before_frozen, before_free = _snapshot(frozen.model.features), _snapshot(free.model.features)
    frozen.train_epoch()
    free.train_epoch()
    assert modes and not any(modes)  # eval mode during training: running statistics are not updated
    assert not any(_changed(before_frozen, frozen.model.features, bn_state))
    assert all(_changed(before_frozen, frozen.model.features, convs))
    assert all(_changed(before_free, free.model.features, bn_state))  # the control: unfrozen BN moves


@pytest.mark.parametrize("schedule", ["step", "cosine", "none"])
def test_lr_factor_matches_torch_schedulers_stepped_once_per_epoch(schedule: str) -> None:
    cfg = _cfg(lr_schedule=schedule, lr_step=3, lr_gamma=0.25, epochs=10)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = {"step": torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.25),
                 "cosine": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10),
                 "none": torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)}[schedule]
    for epoch in range(10):
        assert lr_factor(cfg, epoch) == pytest.approx(opt.param_groups[0]["lr"]), epoch
        opt.step()
        reference.step()


def test_trainer_sets_every_groups_lr_from_the_schedule_each_epoch(blobs) -> None:
    trainer = _trainer(blobs, lr_schedule="step", lr_step=1, lr_gamma=0.5, epochs=3)
    seen = []
    for _ in range(3):
        trainer.train_epoch()
        seen += [g["lr"] for g in trainer.optimizer.param_groups]  # [backbone+embedding, proxies]
    assert seen == pytest.approx([1e-2, 1e-1, 5e-3, 5e-2, 2.5e-3, 2.5e-2])


@pytest.mark.parametrize("clip", [1e-4, 0.0])
def test_gradients_are_clipped_elementwise_on_model_and_loss_parameters(blobs, clip: float) -> None:
    trainer = _trainer(blobs, grad_clip=clip, epochs=1)
    largest = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        largest.append(max(p.grad.abs().max().item() for g in trainer.optimizer.param_groups for p in g["params"]
                           if p.grad is not None))
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.train_epoch()
    assert largest
    if clip:
        assert max(largest) <= clip
    else:
        assert max(largest) > 1e-4  # the control: unclipped gradients are larger than the clip above


@pytest.mark.parametrize("field,value", [("lr_schedule", "linear"), ("lr_step", 0), ("lr_gamma", 0.0),
                                         ("lr_gamma", 1.5), ("warmup_epochs", -1), ("num_workers", -2)])
def test_bad_recipe_values_are_named_with_the_value(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"{field}.*{value!r}"):
        _cfg(**{field: value})


def _resolved(*flags: str, dataset: str = "glyphs") -> RunConfig:
    argv = ["--loss", "proxy_anchor", "--dataset", dataset, *(["--data-root", "."] if dataset != "glyphs" else []),
            *flags]
    return search.run_config(search.build_parser().parse_args(argv), argv)


@pytest.mark.parametrize("dataset,expected", [
    ("glyphs", {"warmup_epochs": 0, "freeze_bn": False, "lr_schedule": "none"}),
    ("cub", {"warmup_epochs": 5, "freeze_bn": True, "lr_schedule": "step", "lr_step": 5, "lr_gamma": 0.5}),
    ("cars", {"warmup_epochs": 5, "freeze_bn": True, "lr_schedule": "step", "lr_step": 10, "lr_gamma": 0.5}),
    ("sop", {"warmup_epochs": 1, "freeze_bn": False, "lr_schedule": "step", "lr_step": 20, "lr_gamma": 0.25}),
    ("inshop", {"warmup_epochs": 1, "freeze_bn": False, "lr_schedule": "step", "lr_step": 20, "lr_gamma": 0.25}),
])
def test_each_dataset_defaults_to_its_recipe_and_it_reaches_the_train_config(dataset: str, expected: dict) -> None:
    tc = TrainConfig(loss="proxy_anchor", **_resolved(dataset=dataset).train_fields())
    assert {k: getattr(tc, k) for k in expected} == expected
    assert (tc.grad_clip, tc.pretrained, tc.num_workers, tc.m_per_class) == (10.0, False, 0, None)


def test_flags_override_the_recipe_even_with_zero_and_false() -> None:
    tc = TrainConfig(loss="proxy_anchor", **_resolved(
        "--warmup-epochs", "0", "--no-freeze-bn", "--lr-schedule", "cosine", "--grad-clip", "0", "--m-per-class", "0",
        "--workers", "3", "--pretrained", dataset="cub").train_fields())
    assert (tc.warmup_epochs, tc.freeze_bn, tc.lr_schedule, tc.grad_clip, tc.m_per_class) == (0, False, "cosine", 0, 0)
    assert tc.num_workers == 3 and tc.pretrained
    assert _resolved("--cpus-per-trial", "4").workers == 3  # the trial's CPUs but the training loop's


@pytest.mark.parametrize("flags,named", [
    (["--lr-gamma", "1.5"], "--lr-gamma"), (["--lr-schedule", "linear"], "linear"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"), (["--workers", "-1"], "--workers"),
])
def test_bad_recipe_flags_are_refused_by_the_parser(flags: list[str], named: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        search.build_parser().parse_args(["--loss", "ms", *flags])
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--pretrained"], "glyphcnn has no ImageNet weights"),
    (["--m-per-class", "80"], "--m-per-class 80 exceeds the batch size 64"),
])
def test_impossible_recipe_combinations_are_refused_before_any_work(flags: list[str], message: str, capsys,
                                                                      tmp_path) -> None:
    assert search.main(["--loss", "ms", "--out", str(tmp_path / "r"), *flags]) == 2
    assert message in capsys.readouterr().err


def _rgb_images(n: int = 16, size: int = 32) -> InMemoryImages:
    g = torch.Generator().manual_seed(0)
    return InMemoryImages(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                          torch.arange(n) % 4)


def test_pretrained_loads_torchvisions_weights_and_fetch_names_them(monkeypatch) -> None:
    """No download: the weights enum hands out a known state dict instead of fetching the file."""
    import torchvision.models as tvm

    weights = tvm.resnet18(weights=None).state_dict()
    weights["conv1.weight"].fill_(0.125)
    fetched = []
    monkeypatch.setattr(tvm.ResNet18_Weights, "get_state_dict",
                        lambda self, *a, **kw: fetched.append(self.name) or weights)
    assert fetch_pretrained("resnet18") == "ResNet18_Weights.IMAGENET1K_V1"
    cfg = TrainConfig(loss="proxy_anchor", loss_params=PA, backbone="resnet18", pretrained=True, batch_size=8,
                      embedding_size=8)
    trainer = Trainer(cfg, _rgb_images())
    assert torch.all(trainer.model.features.conv1.weight == 0.125)
    assert fetched == ["IMAGENET1K_V1", "IMAGENET1K_V1"]
    assert torch.all(Trainer(replace(cfg, pretrained=False), _rgb_images()).model.features.conv1.weight != 0.125)


def test_cuda_speedups_are_selected_only_on_cuda(monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu) is None and memory_format(cpu) == torch.contiguous_format
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: True)
    assert autocast_dtype(cuda) == torch.bfloat16 and memory_format(cuda) == torch.channels_last
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: False)
    assert autocast_dtype(cuda) is None  # pre-Ampere GPUs: fp32 rather than fp16 with loss scaling


def test_the_cpu_path_is_fp32_and_the_cuda_code_path_runs_on_cpu_when_forced(monkeypatch) -> None:
    """The default CPU trainer uses neither speed-up; forcing both on CPU runs the same code the GPU runs."""
    import trainables.trainer as tr

    cfg = TrainConfig(loss="proxy_anchor", loss_params=PA, backbone="resnet18", batch_size=8, embedding_size=8,
                      epochs=1)
    plain = Trainer(cfg, _rgb_images())
    assert plain.amp_dtype is None and plain.memory_format == torch.contiguous_format
    monkeypatch.setattr(tr, "autocast_dtype", lambda device: torch.bfloat16)
    monkeypatch.setattr(tr, "memory_format", lambda device: torch.channels_last)
    forced = Trainer(cfg, _rgb_images())
    assert forced.model.features.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(torch.tensor(forced.train_epoch()))
    embeddings, _ = forced.embed(_rgb_images())
    assert embeddings.dtype == torch.float32 and torch.allclose(embeddings.norm(dim=1), torch.ones(16), atol=1e-2)


def test_image_files_train_through_persistent_workers(tmp_path) -> None:
    write_cub(tmp_path, per_class=4)
    ds = build_dataset("cub", tmp_path, image_size=32)
    cfg = TrainConfig(loss="proxy_anchor", loss_params=PA, batch_size=4,
                      embedding_size=8, num_workers=1, epochs=2)
    trainer = Trainer(cfg, ds.subset(ds.train_classes, train=True))
    trainer.train_epoch()
    loader = trainer.loader
    assert loader is not None and loader.persistent_workers
    trainer.train_epoch()
    assert trainer.loader is loader and trainer.epoch == 2
    embeddings, labels = trainer.embed(ds.subset(ds.train_classes))
    assert embeddings.shape == (8, 8) and sorted(set(labels.tolist())) == [1, 2]


def test_a_cosine_retrain_stopped_at_the_best_epoch_follows_the_trials_lr() -> None:
    trial = _cfg(lr_schedule="cosine", epochs=10)
    retrain = _cfg(lr_schedule="cosine", epochs=4, schedule_epochs=10)
    assert [lr_factor(retrain, e) for e in range(4)] == [lr_factor(trial, e) for e in range(4)]
    assert lr_factor(_cfg(lr_schedule="cosine", epochs=4), 3) < lr_factor(retrain, 3)  # a 4-epoch cosine anneals sooner
    with pytest.raises(ValueError, match="schedule_epochs"):
        _cfg(lr_schedule="cosine", epochs=4, schedule_epochs=3)
