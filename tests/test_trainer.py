from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.config import TrainConfig
from trainables.metrics import nmi
from trainables.trainer import Trainer

ST = {"margin": 0.01, "scale": 20.0, "gamma": 0.1, "tau": 0.2}


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**({"loss": "softtriple", "loss_params": ST, "lr": 1e-3, "proxy_lr": 1e-2, "epochs": 3,
                           "batch_size": 16, "embedding_size": 8} | kw))


def test_loss_parameters_get_their_own_optimiser_group_and_lr(blobs) -> None:
    trainer = Trainer(_cfg(), blobs.subset(blobs.train_classes, train=True))
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in trainer.loss.parameters()}


# The second resumes in the epoch where the warm-up ends and the lr first drops, with BatchNorm frozen.
@pytest.mark.parametrize("recipe", [{}, {"warmup_epochs": 1, "lr_schedule": "step", "lr_step": 1, "freeze_bn": True}],
                         ids=["plain", "across-warmup-and-lr-step"])
def test_resuming_from_a_checkpoint_gives_the_same_weights_as_training_straight_through(recipe, blobs,
                                                                                          tmp_path) -> None:
    torch.set_num_threads(1)
    data = blobs.subset(blobs.train_classes, train=True)
    straight = Trainer(_cfg(**recipe), data)
    for _ in range(2):
        straight.train_epoch()
    first = Trainer(_cfg(**recipe), data)
    first.train_epoch()
    first.save(tmp_path / "ckpt.pt")
    resumed = Trainer(_cfg(**recipe), data)
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.epoch == 1
    resumed.train_epoch()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(straight.loss.fc, resumed.loss.fc)
    for g_straight, g_resumed in zip(straight.optimizer.param_groups, resumed.optimizer.param_groups):
        assert g_straight["lr"] == g_resumed["lr"]
        for p, q in zip(g_straight["params"], g_resumed["params"]):
            a, b = straight.optimizer.state[p], resumed.optimizer.state[q]
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_another_config_is_refused(blobs, tmp_path) -> None:
    data = blobs.subset(blobs.train_classes, train=True)
    Trainer(_cfg(), data).save(tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="another|not this trainer"):
        Trainer(_cfg(lr=2e-3), data).load(tmp_path / "ckpt.pt")


def test_a_checkpoint_resumes_with_other_data_loading_workers(blobs, tmp_path) -> None:
    data = blobs.subset(blobs.train_classes, train=True)
    Trainer(_cfg(num_workers=0), data).save(tmp_path / "ckpt.pt")
    Trainer(_cfg(num_workers=2), data).load(tmp_path / "ckpt.pt")  # how it runs, not what it learns


def test_config_round_trips_through_search_params() -> None:
    cfg = TrainConfig.from_params("softtriple", {"lr": 1e-3, "weight_decay": 0.0, "proxy_lr": 0.1, **ST})
    assert cfg.loss_params == ST and cfg.proxy_lr == 0.1
    assert TrainConfig.from_params("softtriple", cfg.params()) == cfg


@pytest.mark.parametrize("field,value", [("epochs", 0), ("lr", -1.0), ("batch_size", 1)])
def test_bad_config_values_are_named(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        _cfg(**{field: value})


def test_validation_recall_rises_above_an_untrained_model_within_a_few_epochs_on_glyphs() -> None:
    from trainables.data.glyphs import GlyphsDataset
    from trainables.data.splits import fixed_split

    torch.set_num_threads(1)  # one thread: multi-threaded torch collapses on a loaded 2-core machine
    ds = GlyphsDataset()
    split = fixed_split(ds.train_classes, 0.1, seed=0)
    cfg = TrainConfig(loss="proxy_anchor", loss_params={"margin": 0.1, "alpha": 32.0}, lr=2e-3, proxy_lr=0.1,
                      epochs=3, batch_size=64, embedding_size=64)
    trainer = Trainer(cfg, ds.subset(split.fit, train=True))
    val = ds.subset(split.val)
    before = trainer.evaluate(val, (1,))["recall@1"]
    for _ in range(3):
        trainer.train_epoch()
    after = trainer.evaluate(val, (1,))["recall@1"]
    assert np.isfinite(after) and after > before + 0.1, (before, after)


@pytest.mark.parametrize("loss", sorted(__import__("trainables.losses", fromlist=["LOSSES"]).LOSSES))
def test_every_registered_loss_trains_an_epoch_with_its_paper_defaults(loss: str, blobs) -> None:
    from spaces import OptimiserDefaults, default_config

    cfg = TrainConfig.from_params(loss, default_config(loss, OptimiserDefaults()), epochs=1, batch_size=16,
                                  embedding_size=8)
    trainer = Trainer(cfg, blobs.subset(blobs.train_classes, train=True))
    assert np.isfinite(trainer.train_epoch())
    assert trainer.epoch == 1


def test_pd_class_mean_start_puts_proxies_on_class_means_once(blobs) -> None:
    from spaces import OptimiserDefaults, default_config

    params = default_config("pd", OptimiserDefaults()) | {"proxy_init": "class_mean"}
    trainer = Trainer(TrainConfig.from_params("pd", params, epochs=1, batch_size=16, embedding_size=8),
                      blobs.subset(blobs.train_classes, train=True))
    assert trainer.loss.needs_proxy_init
    trainer.train_epoch()
    assert not trainer.loss.needs_proxy_init


def test_embeddings_are_fp32_even_for_a_trainer_that_trains_under_autocast(blobs) -> None:
    """On CUDA the training forward runs in bf16 autocast; evaluation must not (same scores on any device)."""
    trainer = Trainer(_cfg(), blobs.subset(blobs.train_classes, train=True))
    items = blobs.subset(blobs.train_classes)
    plain, _ = trainer.embed(items)
    trainer.autocast = torch.autocast("cpu", dtype=torch.bfloat16)  # what a CUDA trainer trains under
    again, _ = trainer.embed(items)
    assert again.dtype == torch.float32 and torch.equal(plain, again)


def test_evaluate_adds_the_nmi_of_every_item_embedded_only_when_asked(blobs) -> None:
    trainer = Trainer(_cfg(), blobs.subset(blobs.train_classes, train=True))
    queries, gallery = blobs.subset(blobs.train_classes[:3]), blobs.subset(blobs.train_classes[2:])
    (q, q_lab), (g, g_lab) = trainer.embed(queries), trainer.embed(gallery)
    assert "nmi" not in trainer.evaluate(queries, [1])
    assert trainer.evaluate(queries, [1], with_nmi=True)["nmi"] == nmi(q, q_lab, seed=0)
    both = trainer.evaluate(queries, [1], gallery=gallery, with_nmi=True)["nmi"]
    assert both == nmi(torch.cat([q, g]), np.concatenate([q_lab, g_lab]), seed=0)
