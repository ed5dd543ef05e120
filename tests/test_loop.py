"""The training loop (tsloc.crops.loop.fit on the train.* params as they are): cached features against
the plain path, keep best or last, seeds, the optimiser, progressive resizing, evaluation every N
epochs, the moving average, and an interrupted fit that continues to the same weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import feature_subsets, heads_only, tiny_data
from tsloc.crops.batches import Batches, epoch_sizes, features_source, images_source
from tsloc.crops.features import compute_features
from tsloc.crops.losses import Objective
from tsloc.crops.loop import evaluate, fit, make_optimizer
from tsloc.crops.model import SignNet, build_model
from tsloc.params import TrainParams
from tsloc.resume import Resume


def _fit(net, sources, labels, boxes, seed=5):
    subsets = {"train": Batches(sources[0], labels[:30], boxes[:30]),
               "valid": Batches(sources[1], labels[30:], boxes[30:])}
    history = []
    best = fit(net, subsets, TrainParams(
        epochs=3, batch_size=8, seed=seed), image_size=48,
        log=lambda e, row, _: history.append(row))
    return best, history


def test_cached_features_train_like_the_plain_loop():
    images, labels, boxes = tiny_data()
    torch.manual_seed(0)
    plain = build_model("mobilenet_v2", "none", num_classes=3, image_size=48)
    cached = SignNet(plain.backbone, 1280, num_classes=3, image_size=48)
    cached.load_state_dict(plain.state_dict())
    feats = compute_features(cached.backbone, images, torch.device("cpu"), batch_size=16)
    best_p, hist_p = _fit(plain, [images_source(images[:30], boxes[:30], "cpu"),
                                  images_source(images[30:], boxes[30:], "cpu")], labels, boxes)
    best_c, hist_c = _fit(cached, [features_source(feats[:30], boxes[:30], "cpu"),
                                   features_source(feats[30:], boxes[30:], "cpu")], labels, boxes)
    assert best_p["epoch"] == best_c["epoch"]
    for k, v in best_p["state"].items():
        assert torch.allclose(v.float(), best_c["state"][k].float(), atol=1e-4), k
    for rp, rc in zip(hist_p, hist_c):
        assert rp["valid"]["loss"] == pytest.approx(rc["valid"]["loss"], rel=1e-4)


def test_keep_last_returns_the_final_weights():
    images, labels, boxes = tiny_data()
    feats = np.random.default_rng(2).normal(size=(len(images), 1280)).astype(np.float32)
    net = heads_only()
    subsets = {"train": Batches(features_source(feats[:30], boxes[:30], "cpu"), labels[:30], boxes[:30]),
               "valid": Batches(features_source(feats[30:], boxes[30:], "cpu"), labels[30:], boxes[30:])}
    history = []
    # A large learning rate on random features: the validation loss does not fall every epoch.
    kept = fit(net, subsets, TrainParams(
        epochs=4, batch_size=8, seed=1, lr=0.5,
            keep="last"), image_size=48, log=lambda e, row, _: history.append(row))
    assert kept["epoch"] == 4 and kept["loss"] == pytest.approx(history[-1]["valid"]["loss"])
    for k, v in net.state_dict().items():
        assert torch.equal(kept["state"][k], v), k
    best_epoch = 1 + int(np.argmin([row["valid"]["loss"] for row in history]))
    assert best_epoch != 4  # so the test tells the two apart
    net = heads_only()
    best = fit(net, subsets, TrainParams(
        epochs=4, batch_size=8, seed=1, lr=0.5), image_size=48)
    assert best["epoch"] == best_epoch


def test_same_seed_same_result_and_last_batch_of_one_dropped():
    images, labels, boxes = tiny_data(n=39)  # 29 training images: batches of 8, 8, 8, 5
    feats = np.random.default_rng(1).normal(size=(39, 1280)).astype(np.float32)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 1280, num_classes=3)
        subsets = {"train": Batches(features_source(feats[:29], boxes[:29], "cpu"), labels[:29], boxes[:29]),
                   "valid": Batches(features_source(feats[29:], boxes[29:], "cpu"), labels[29:], boxes[29:])}
        runs.append(fit(net, subsets, TrainParams(epochs=2, batch_size=7, seed=3), image_size=48))
    for k in runs[0]["state"]:
        assert torch.equal(runs[0]["state"][k], runs[1]["state"][k])  # 29 = 4 x 7 + 1: the 1 is dropped


def test_optimizer_groups_and_cosine_schedule():
    net = build_model("mobilenet_v2", "none", num_classes=5, trainable_blocks=1)
    objective = Objective(net, torch.ones(5), image_size=64)
    train = TrainParams(lr=1e-2, optimizer="adamw", weight_decay=0.05, backbone_lr=0.1, schedule="cosine",
                        warmup_epochs=1, epochs=5)
    opt, sched = make_optimizer(objective, train, steps_per_epoch=10)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-3, 1e-4])  # warm-up step 1 of 10
    lrs = []
    for _ in range(50):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(1e-2) and lrs[-1] < 1e-4
    assert opt.param_groups[1]["weight_decay"] == 0  # the loss balance is not decayed
    assert opt.param_groups[1]["params"] == [objective.loss_weight, objective.uncertainty]
    assert not any(p is objective.loss_weight for p in opt.param_groups[0]["params"])


def test_epoch_sizes_grow_to_the_full_size():
    sizes = epoch_sizes(112, 144, 18)
    assert len(sizes) == 18 and sizes[0] == 112 and sizes[-1] == 144
    assert sizes == sorted(sizes) and all(s % 16 == 0 for s in sizes)
    assert sizes.count(112) == 5 and sizes.count(144) == 5  # linear: a quarter of the way each
    assert epoch_sizes(100, 136, 5) == [96, 112, 112, 128, 136]  # the last epoch is the stored size
    assert epoch_sizes(112, 144, 1) == [144]


@pytest.mark.slow  # a MobileNetV2 fine-tuned for three epochs: CI runs it, the edit-test loop does not
def test_fit_trains_at_each_epochs_size_and_evaluates_at_the_stored_one():
    images, labels, boxes = tiny_data(size=64)
    torch.manual_seed(0)
    net = build_model("mobilenet_v2", "none", num_classes=3, image_size=64, trainable_blocks=2, box="spatial")
    seen = {"train": [], "valid": []}

    def spy(source, name):
        def fetch(idx, train, size=None):
            x, b = source(idx, train, size)
            seen[name].append((size, x.shape[-1]))
            return x, b
        return fetch
    aug = {"margin": 0.3, "rotation": 5, "color": 0.1, "blur": 0.0}
    subsets = {"train": Batches(spy(images_source(images[:30], boxes[:30], "cpu", aug, torch.Generator()), "train"),
                                labels[:30], boxes[:30]),
               "valid": Batches(spy(images_source(images[30:], boxes[30:], "cpu"), "valid"), labels[30:], boxes[30:])}
    history = []
    fit(net, subsets, TrainParams(
        epochs=3, batch_size=8, seed=0, start_size=32), image_size=64,
        log=lambda e, row, _: history.append(row))
    per_epoch = len(seen["train"]) // 3
    assert [s for s, _ in seen["train"][::per_epoch]] == [32, 48, 64]
    assert [w for _, w in seen["train"][::per_epoch]] == [32, 48, 64]  # the images the network took
    assert {s for s, _ in seen["valid"]} == {None} and {w for _, w in seen["valid"]} == {64}
    assert [row["train"]["input_size"] for row in history] == [32, 48, 64]
    # Without augmentation the plain path resizes too.
    x, _ = images_source(images[:4], boxes[:4], "cpu")(torch.arange(4), True, 32)
    assert x.shape == (4, 3, 32, 32)


def test_eval_every_skips_evaluation_not_training():
    subsets = feature_subsets()
    runs = {}
    for every, keep in ((1, "best"), (3, "best"), (3, "last")):
        net, history = heads_only(), []
        kept = fit(net, subsets, TrainParams(
                epochs=4, batch_size=8, seed=1, keep=keep, eval_every=every), image_size=48,
            log=lambda e, row, _: history.append(row))
        runs[every, keep] = (net.state_dict(), history, kept)
    (state1, hist1, _), (state3, hist3, kept3) = runs[1, "best"], runs[3, "best"]
    last = runs[3, "last"][2]
    assert last["epoch"] == 4 and all(torch.equal(v, last["state"][k]) for k, v in runs[3, "last"][0].items())
    for k, v in state1.items():
        assert torch.equal(v, state3[k]), k  # the same weights: evaluation never touches training
    assert [("valid" in row) for row in hist3] == [False, False, True, True]  # epoch 3 and the last
    assert hist3[2]["valid"] == hist1[2]["valid"] and hist3[3]["valid"] == hist1[3]["valid"]
    assert kept3["epoch"] in (3, 4)  # keep=best chooses among evaluated epochs only


def test_ema_is_evaluated_and_kept_and_leaves_training_alone():
    subsets = feature_subsets()
    plain, averaged, hist_p, hist_a = heads_only(), heads_only(), [], []
    fit(plain, subsets, TrainParams(
        epochs=3, batch_size=8, seed=1, keep="last"), image_size=48,
        log=lambda e, row, _: hist_p.append(row))
    kept = fit(averaged, subsets, TrainParams(
        epochs=3, batch_size=8, seed=1, keep="last", ema_decay=0.9), image_size=48,
        log=lambda e, row, _: hist_a.append(row))
    for k, v in plain.state_dict().items():  # the live weights train exactly as without EMA
        assert torch.equal(v, averaged.state_dict()[k]), k
    assert [r["train"] for r in hist_p] == [r["train"] for r in hist_a]
    # What is kept and evaluated is the average: it differs from the live weights and scores as such.
    w_live, w_kept = averaged.classifier[1].weight, kept["state"]["classifier.1.weight"]
    assert not torch.allclose(w_live, w_kept)
    # BatchNorm statistics are averaged too (use_buffers), not left at the live model's.
    assert not torch.allclose(averaged.classifier[0].running_mean, kept["state"]["classifier.0.running_mean"])
    ema_net = heads_only()
    ema_net.load_state_dict(kept["state"])
    again = evaluate(Objective(ema_net, torch.ones(3), image_size=48), subsets["valid"], 8)
    assert again["loss"] == pytest.approx(hist_a[-1]["valid"]["loss"], rel=1e-5)
    assert again["loss"] != pytest.approx(hist_p[-1]["valid"]["loss"], rel=1e-5)


def test_an_empty_validation_set_is_refused():
    from tsloc.errors import DataError
    images, labels, boxes = tiny_data(n=10)
    feats = np.zeros((10, 1280), np.float32)
    net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 1280, num_classes=3)
    subsets = {"train": Batches(features_source(feats, boxes, "cpu"), labels, boxes),
               "valid": Batches(features_source(feats[:0], boxes[:0], "cpu"), labels[:0], boxes[:0])}
    with pytest.raises(DataError, match="no valid images"):
        fit(net, subsets, TrainParams(epochs=1, batch_size=4, seed=0), image_size=48)


def _resumable_run(resume, stop_after=None):
    """Three epochs with everything that carries state: dropout, a cosine schedule, AdamW, a moving
    average of the weights, validation every 2nd epoch, keep=best."""
    subsets = feature_subsets()
    net = heads_only()
    history = []

    def log(epoch, row, objective):
        history.append((epoch, row))
        if epoch == stop_after:
            raise KeyboardInterrupt  # after the log, before the state of this epoch is written

    best = fit(net, subsets, TrainParams(
        epochs=3, batch_size=8, seed=4,
            lr=0.01, optimizer="adamw", schedule="cosine", warmup_epochs=1, eval_every=2,
            ema_decay=0.9), image_size=48, log=log, resume=resume)
    return best, history, net


def test_an_interrupted_fit_continues_to_the_same_weights(tmp_path, capsys):
    whole, hist_whole, _ = _resumable_run(None)
    resume = Resume(tmp_path / "state.pt", "key-1")
    with pytest.raises(KeyboardInterrupt):
        _resumable_run(resume, stop_after=3)          # epochs 1 and 2 saved, 3 interrupted
    assert resume.epochs_done() == 2
    best, hist, net = _resumable_run(resume)
    assert "continuing after epoch 2 of 3" in capsys.readouterr().err
    assert [e for e, _ in hist] == [3]                  # only the missing epoch ran
    assert hist[0][1] == hist_whole[2][1]               # its figures are the uninterrupted run's
    assert best["epoch"] == whole["epoch"] and best["loss"] == whole["loss"]
    for k, v in whole["state"].items():
        assert torch.equal(best["state"][k], v), k
    other = Resume(tmp_path / "state.pt", "key-2")      # other params or data: not continued
    assert other.epochs_done() == 0 and not other.path.exists()
    assert "from other params or data, discarded" in capsys.readouterr().err


@pytest.mark.slow
def test_a_compiled_step_trains_like_the_eager_one():
    """train.compile: the step's network and loss through torch.compile (inductor on the CPU; CUDA graphs
    on a GPU) train to the eager step's numbers, within float reordering (dropout off: compiled, it draws
    from inductor's own random stream)."""
    images, labels, boxes = tiny_data(size=48)
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = build_model("mobilenet_v2", "none", num_classes=3, image_size=48, trainable_blocks=2, box="spatial",
                          dropout=0.0)  # compiled dropout draws from inductor's own random stream
        subsets = {"train": Batches(images_source(images[:30], boxes[:30], "cpu"), labels[:30], boxes[:30]),
                   "valid": Batches(images_source(images[30:], boxes[30:], "cpu"), labels[30:], boxes[30:])}
        history = []
        fit(net, subsets, TrainParams(epochs=2, batch_size=10, seed=0, box_loss="l1+giou", loss_balance="fixed",
                                      compile=compiled), image_size=48, log=lambda e, row, _: history.append(row))
        runs.append(history)
    for eager, compiled in zip(*runs):
        for part in ("train", "valid"):
            assert compiled[part]["loss"] == pytest.approx(eager[part]["loss"], rel=1e-3), part
