"""The network: shapes, frozen and fine-tuned blocks, the box heads, and the box helpers."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from tsloc.boxes import make_valid, paired_iou, relative_boxes, to_pixels, to_relative
from tsloc.backbone import backbone_features
from tsloc.crops.model import Ensemble, SignNet, build_model


def test_shapes_and_frozen_backbone():
    net = build_model("mobilenet_v2", "none", num_classes=62)
    logits, boxes = net(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 62) and boxes.shape == (3, 4)
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for p in (*net.classifier.parameters(), *net.box.parameters()))
    assert net.num_classes == 62
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


def test_convnet_trains_whole_at_small_sizes_and_has_no_imagenet_weights(tmp_path):
    """The small network for small crops: every block trains (there is nothing pre-trained to keep),
    48 px leave a 6 x 6 map for the spatial box head, and its weights come from a file or nowhere."""
    from tsloc.errors import WeightsError
    net = build_model("convnet", "none", num_classes=5, image_size=48, trainable_blocks=-1, box="spatial")
    assert net.split_at == 0 and all(p.requires_grad for p in net.parameters())
    assert net.features(torch.randn(2, 3, 48, 48)).shape == (2, 256, 6, 6)
    logits, boxes = net.eval()(torch.randn(2, 3, 48, 48))
    assert logits.shape == (2, 5) and boxes.shape == (2, 4)
    with pytest.raises(WeightsError, match="convnet has no ImageNet weights.*model.weights=none"):
        backbone_features("convnet", "imagenet")
    torch.save(net.backbone.state_dict(), tmp_path / "convnet.pt")
    loaded, channels = backbone_features("convnet", str(tmp_path / "convnet.pt"))
    assert channels == 256 and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                                     net.backbone.state_dict().values()))


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
        fused = net.train().__dict__["_frozen_fused"]
        assert net.eval().train().__dict__["_frozen_fused"] is fused  # unchanged: the same copy (a compiled step's graph holds)
        net.double().train()  # the tensors replaced (a move, another type): folded again, from them
        assert net.__dict__["_frozen_fused"] is not fused
        assert next(net.__dict__["_frozen_fused"].parameters()).dtype == torch.float64


def test_relative_boxes_of_a_table():
    import pandas as pd
    table = pd.DataFrame({"left": [4, 0], "top": [3, 10], "right": [36, 20], "bottom": [27, 50],
                          "width": [40, 20], "height": [30, 50]})
    assert torch.allclose(relative_boxes(table), torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.0, 0.2, 1.0, 1.0]]))


def test_an_ensemble_answers_the_mean_of_its_members():
    """refiner.members: the members' class logits and boxes averaged, in PyTorch and through Predictor
    (each member's first convolution and box pooling folded, as the exports are)."""
    from tsloc.crops.inference import Predictor
    from tsloc.weights import IMAGENET_MEAN, IMAGENET_STD
    torch.manual_seed(0)
    members = [build_model("mobilenet_v2", "none", 3, image_size=64, trainable_blocks=8, box="spatial").eval()
               for _ in range(3)]
    for k, m in enumerate(members):
        with torch.no_grad():
            m.classifier[1].bias.copy_(torch.tensor([k, 0.0, -k]))
            m.start_boxes_at(torch.tensor([0.1 + 0.05 * k, 0.2, 0.8, 0.9 - 0.05 * k]))
    ensemble = Ensemble(members).eval()
    assert ensemble.image_size == 64 and ensemble.num_classes == 3 and ensemble.box_kind == "spatial"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logits, boxes = ensemble(x)
        answers = [m(x) for m in members]
        assert torch.allclose(logits, sum(a[0] for a in answers) / 3, atol=1e-6)
        assert torch.allclose(boxes, torch.tensor([0.15, 0.2, 0.8, 0.85]).expand(2, 4), atol=1e-5)
        raw = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        logits, boxes = ensemble((raw.permute(0, 3, 1, 2).float() / 255 - mean) / std)
        probs, folded_boxes = Predictor(ensemble)(raw)
    assert torch.allclose(probs, torch.softmax(logits, 1), atol=1e-5) and torch.allclose(folded_boxes, boxes, atol=1e-5)
    assert ensemble.shared == 0  # three random backbones: nothing in common


def test_members_fine_tuned_from_the_same_weights_run_their_frozen_blocks_once():
    """The refiner's members share ImageNet's frozen blocks: the ensemble runs them once (`shared` blocks), with
    the answers of running each member whole, in PyTorch and folded for export (one stem in the graph)."""
    from tsloc.crops.inference import Predictor
    torch.manual_seed(0)
    members = [build_model("mobilenet_v2", "none", 3, image_size=64, trainable_blocks=8, box="spatial").eval()
               for _ in range(2)]
    frozen = members[0].backbone[:members[0].split_at].state_dict()
    members[1].backbone[:members[1].split_at].load_state_dict(frozen)
    for m in members:
        for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
            with torch.no_grad():  # statistics that make the features differ between images (as trained ones do)
                bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 2)
    members[1].backbone[:members[1].split_at].load_state_dict(frozen)
    with torch.no_grad():
        members[1].box[-1].weight.normal_(0, 0.05)
    ensemble = Ensemble(members).eval()
    assert ensemble.shared == members[0].split_at  # the frozen blocks: the same; the fine-tuned: each its own
    x = torch.rand(2, 3, 64, 64)
    calls = []
    hook = members[1].backbone[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        logits, boxes = ensemble(x)
        answers = [m(x) for m in members]
    hook.remove()
    assert len(calls) == 1  # member 1's stem: only when it ran whole, not in the ensemble
    assert torch.allclose(logits, (answers[0][0] + answers[1][0]) / 2, atol=1e-5)
    assert torch.allclose(boxes, (answers[0][1] + answers[1][1]) / 2, atol=1e-5)
    assert Predictor(ensemble).model.shared == ensemble.shared
