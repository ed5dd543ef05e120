"""The objective: class weights, the box losses, the balance between the two (whose learnable
parameters belong to the objective, not to the network) and the reported loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import heads_only, tiny_data
from tsloc.crops.batches import Batches, features_source
from tsloc.crops.losses import Objective, class_weights
from tsloc.crops.loop import evaluate
from tsloc.crops.model import SignNet


def test_class_weights_kinds():
    labels = np.array([0] * 16 + [1] * 4)
    inverse, sqrt, none = (class_weights(labels, 3, k) for k in ("inverse", "sqrt", "none"))
    assert inverse[1] / inverse[0] == pytest.approx(4) and sqrt[1] / sqrt[0] == pytest.approx(2)
    assert none[1] == pytest.approx(none[0]) and none[2] == 0 and sqrt.sum() == pytest.approx(1)


def test_class_weights_by_class_id():
    w = class_weights(np.array([0, 0, 0, 2]), 4)
    assert w[0] == pytest.approx(w[2] / 3) and w[1] == 0 and w.sum() == pytest.approx(1)


def _objective(**kwargs):
    net = SignNet(torch.nn.Sequential(torch.nn.Identity()), 8, num_classes=2)
    kwargs.setdefault("image_size", 200)
    return Objective(net, torch.tensor([0.25, 0.75]), kwargs.pop("box_weights", None), **kwargs)


def test_losses_weighting():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    boxes = torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.0, 0.0, 0.5, 0.5]])
    target = torch.tensor([[0.1, 0.2, 0.9, 0.9], [0.0, 0.0, 0.5, 0.5]])
    learned = _objective()
    total, cls, l1 = learned.losses(logits, boxes, y, target)
    ce = F.cross_entropy(logits, y, reduction="none")
    assert cls.item() == pytest.approx((0.25 * ce[0] + 0.75 * ce[1]).item())
    assert l1.item() == pytest.approx(0.25 * 0.1 * 200)  # 0.1 of a 200-px image, weighted
    assert total.item() == pytest.approx(cls.item() + l1.item() / 100)
    # The notebook's learned weight can only grow: d total / d w = -box / w^2 < 0.
    total.backward()
    assert learned.loss_weight.grad < 0
    # fixed: the same figure, and no gradient reaches the weight.
    fixed = _objective(balance="fixed")
    total_f, _, _ = fixed.losses(logits, boxes, y, target)
    assert total_f.item() == pytest.approx(total.item()) and not total_f.requires_grad
    # Kendall et al.: exp(-s) L + s per task, s learned.
    kendall = _objective(balance="uncertainty")
    with torch.no_grad():
        kendall.uncertainty.copy_(torch.tensor([0.5, 1.0]))
    total, cls, box = kendall.losses(logits, boxes, y, target)
    expected = np.exp(-0.5) * cls.item() + 0.5 + np.exp(-1.0) * box.item() + 1.0
    assert total.item() == pytest.approx(expected, rel=1e-5)
    # GIoU, in pixels of the input: zero for a perfect box.
    giou = _objective(box_loss="giou")
    assert giou.losses(logits, target, y, target)[2].item() == pytest.approx(0.0, abs=1e-3)
    assert giou.losses(logits, boxes, y, target)[2].item() > 0
    # Label smoothing raises the loss of a confident right answer.
    assert _objective(label_smoothing=0.2).losses(logits, boxes, y, target)[1].item() > cls.item()
    # Separate box weights: the cross-entropy keeps `weights`, the box loss follows `box_weights`.
    _, cls2, l1 = _objective(box_weights=torch.tensor([1.0, 0.0])).losses(logits, boxes, y, target)
    assert cls2.item() == pytest.approx(cls.item())
    assert l1.item() == pytest.approx(0.1 * 200)  # all the weight on the first image's error
    assert _objective(box_weights=torch.tensor([0.0, 1.0])).losses(logits, boxes, y, target)[2].item() == 0


def test_the_balance_belongs_to_the_objective_not_the_network():
    """The network's weights are what the model file holds; the balance is training's business."""
    net = heads_only()
    names = set(net.state_dict())
    assert not {"loss_weight", "uncertainty"} & names
    objective = Objective(net, torch.ones(3), image_size=48, loss_weight=7.0)
    assert objective.loss_weight.item() == 7.0
    assert {"loss_weight", "uncertainty"} <= set(objective.state_dict())
    assert {f"model.{k}" for k in names} <= set(objective.state_dict())
    assert objective.unused() == [objective.uncertainty]  # learned: the log variances do not train


def test_validation_loss_is_the_plain_per_image_mean_at_a_fixed_weight():
    """keep=best compares this figure: one value per image, averaged over the whole set, so neither the
    batch size, the class weights, label smoothing nor the learned loss weight moves it."""
    images, labels, boxes = tiny_data(n=23)
    feats = np.random.default_rng(3).normal(size=(len(images), 1280)).astype(np.float32)
    net = heads_only().eval()
    data = Batches(features_source(feats, boxes, "cpu"), labels, boxes)
    objective = Objective(net, torch.ones(3), image_size=48, loss_weight=100.0)
    losses = [evaluate(objective, data, bs)["loss"] for bs in (1, 4, 7, 23)]
    assert losses == pytest.approx([losses[0]] * 4, rel=1e-6)
    with torch.no_grad():
        objective.loss_weight.fill_(7.0)   # the learned divisor: not part of the reported loss
    smoothed = Objective(net, torch.tensor([0.1, 0.3, 0.6]), image_size=48, label_smoothing=0.3, loss_weight=100.0)
    assert evaluate(smoothed, data, 5)["loss"] == pytest.approx(losses[0], rel=1e-6)
    assert evaluate(objective, data, 5)["loss"] == pytest.approx(losses[0], rel=1e-6)
    with torch.no_grad():             # by hand
        logits, pred = net.heads(torch.as_tensor(feats))
        expected = (F.cross_entropy(logits, labels, reduction="none")
                    + (pred - boxes).abs().sum(1) * 48 / 100.0).mean().item()
    assert losses[0] == pytest.approx(expected, rel=1e-5)


def test_the_giou_loss_gives_torchvisions_numbers_and_gradients_without_a_mask():
    """tsloc.boxes.giou_loss replaces torchvision's (whose boolean-mask assignment syncs a GPU step with
    the host): bit for bit the same losses and gradients, on overlapping, touching and disjoint pairs."""
    from torchvision.ops import generalized_box_iou_loss

    from tsloc.boxes import giou_loss, make_valid
    g = torch.Generator().manual_seed(0)
    a = make_valid(torch.rand(400, 4, generator=g))
    b = make_valid(torch.rand(400, 4, generator=g))
    b[:5] = a[:5]                                                   # the same box
    b[5:10] = a[5:10] + torch.tensor([1.0, 0.0, 1.0, 0.0])          # far apart
    b[10, :] = torch.tensor([a[10, 2], a[10, 1], a[10, 2] + 0.1, a[10, 3]])  # touching: zero intersection
    assert (giou_loss(a, b)[:5] < 1e-4).all() and (giou_loss(a, b)[5:10] > 1).all()
    grads = []
    for fn in (giou_loss, lambda x, y: generalized_box_iou_loss(x, y, reduction="none")):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = fn(x, y)
        (loss * torch.linspace(0.5, 1.5, len(loss))).sum().backward()
        grads.append((loss.detach(), x.grad, y.grad))
    for ours, theirs in zip(*grads):
        assert torch.equal(ours, theirs)
