"""The model file: written, read back, checked against the data, described; older files still load."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import stub_model
from tsloc.crops import checkpoint
from tsloc.describe import one_line
from tsloc.errors import DataError, ModelFileError


def test_equal_checkpoints_are_equal_files(tmp_path):
    """DVC compares outputs by md5: retraining to the same weights must give the same model file."""
    ckpt = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    checkpoint.save(tmp_path / "one" / "model.pt", ckpt)
    checkpoint.save(tmp_path / "two" / "model.pt", ckpt)
    assert (tmp_path / "one" / "model.pt").read_bytes() == (tmp_path / "two" / "model.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]["w"], ckpt["state_dict"]["w"])
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["model.pt"]  # no temporary file left


def test_a_model_reads_back_with_its_description(tmp_path):
    model, ckpt = checkpoint.load(stub_model(tmp_path / "model.pt", image_size=64))
    assert not model.training and ckpt["image_size"] == 64 and ckpt["num_classes"] == 62 == model.num_classes
    assert ckpt["class_ids"] == list(range(62)) and ckpt["box_format"] == checkpoint.BOX_FORMAT
    assert ckpt["loss_weight"] == 100.0 and set(ckpt["versions"]) == {"torch", "torchvision", "python"}
    assert "recipe notebook, 62 classes (no pipeline reports beside it" in one_line(
        ckpt, tmp_path / "none.json", tmp_path / "none.json")


def test_an_ensemble_reads_back_with_its_members(tmp_path):
    """The refiner's members in one file: it says how many, and loads as an Ensemble that answers alike."""
    from tsloc.crops.model import Ensemble, build_model
    torch.manual_seed(0)
    net = Ensemble([build_model("mobilenet_v2", "none", 4, image_size=64, box="spatial") for _ in range(2)]).eval()
    checkpoint.save(tmp_path / "e.pt", checkpoint.make(net, net.state_dict(), backbone="mobilenet_v2", image_size=64,
                                                       class_names=list("abcd"), epoch=1, loss_weight=1.0))
    model, ckpt = checkpoint.load(tmp_path / "e.pt")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert ckpt["members"] == 2 and isinstance(model, Ensemble) and torch.equal(model(x)[1], net(x)[1])
    assert "members" not in torch.load(stub_model(tmp_path / "one.pt"), weights_only=True)  # one network: as before


def test_a_file_from_before_the_balance_moved_still_loads(tmp_path):
    """Model files written while the network held the loss balance carry two more tensors."""
    path = stub_model(tmp_path / "model.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"].update(loss_weight=torch.tensor(123.0), uncertainty=torch.zeros(2))
    torch.save(ckpt, tmp_path / "old.pt")
    model, old = checkpoint.load(tmp_path / "old.pt")
    new, _ = checkpoint.load(path)
    for k, v in new.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_a_truncated_model_file_is_named(tmp_path):
    path = stub_model(tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(ModelFileError, match=r"model.pt: not a compatible tsloc model"):
        checkpoint.load(path)
    with pytest.raises(ModelFileError, match=r"missing.pt: model file not found"):
        checkpoint.load(tmp_path / "missing.pt")


def test_a_model_that_does_not_fit_the_data_is_named(tmp_path):
    _, ckpt = checkpoint.load(stub_model(tmp_path / "model.pt", image_size=64))
    split = pd.DataFrame({"class_id": [0, 61]})
    checkpoint.check_fits(ckpt, torch.zeros(2, 64, 64, 3), split, "m.pt")
    with pytest.raises(DataError, match="m.pt: the model takes 64-px images but data/features/images.npy holds 96-px"):
        checkpoint.check_fits(ckpt, torch.zeros(2, 96, 96, 3), split, "m.pt")
    with pytest.raises(DataError, match="m.pt: the model knows 62 classes but data/split.csv has class id 70"):
        checkpoint.check_fits(ckpt, torch.zeros(2, 64, 64, 3), pd.DataFrame({"class_id": [70]}), "m.pt")


def test_the_card_says_where_the_backbone_weights_came_from():
    """ImageNet's fine-tuned MobileNetV2 and the small network trained from scratch read differently."""
    from tsloc.describe import backbone_text
    assert backbone_text({"backbone": "mobilenet_v2", "weights": "imagenet", "train": {"finetune_blocks": 8}}) == \
        "torchvision `mobilenet_v2`, ImageNet weights (imagenet), its last 8 blocks fine-tuned"
    assert backbone_text({"backbone": "mobilenet_v2", "train": {}}) == \
        "torchvision `mobilenet_v2`, ImageNet weights (imagenet), frozen"  # files from before `weights` was saved
    assert backbone_text({"backbone": "convnet", "weights": "none", "train": {"finetune_blocks": -1}}) == \
        "`convnet` (tsloc.backbone) from random weights, trained entirely"
    assert backbone_text({"backbone": "resnet18", "weights": "weights/r18.pt", "train": {"finetune_blocks": -1}}) == \
        "torchvision `resnet18`, weights from weights/r18.pt, fine-tuned entirely"
