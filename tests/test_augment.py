"""Augmentation and the shifted test views keep boxes on the sign."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tsloc.crops.augment import augment, random_windows, warp
from tsloc.crops.evaluation import shifted_views


def _painted(size=64, box=(0.25, 0.3, 0.7, 0.8)):
    img = np.zeros((size, size, 3), np.uint8)
    l, t, r, b = (round(v * size) for v in box)
    img[t:b, l:r] = 255
    return img, torch.tensor([box], dtype=torch.float32)


def _white_box(img: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(img.mean(-1) > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float) / img.shape[1]


def test_identity_warp_changes_nothing():
    img, box = _painted()
    x = torch.as_tensor(img).permute(2, 0, 1)[None].float() / 255
    out, new = warp(x, box, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.zeros(1), 64)
    assert torch.allclose(out, x, atol=1e-5) and torch.allclose(new, box)


def test_windows_hold_the_box_with_bounded_margins():
    boxes = torch.tensor([[0.2, 0.3, 0.6, 0.9]]).repeat(500, 1)
    w = random_windows(boxes, 0.45, torch.Generator().manual_seed(0))
    margins = (boxes - w) * torch.tensor([1.0, 1.0, -1.0, -1.0]) / torch.tensor([0.4, 0.6, 0.4, 0.6])
    assert margins.min() >= 0 and margins.max() <= 0.45 and margins.mean() == pytest.approx(0.225, abs=0.02)


def test_recrop_share_keeps_some_images_whole():
    boxes = torch.tensor([[0.2, 0.3, 0.6, 0.9]]).repeat(1000, 1)
    w = random_windows(boxes, 0.45, torch.Generator().manual_seed(0), recrop=0.3)
    whole = (w == torch.tensor([0.0, 0.0, 1.0, 1.0])).all(1).float().mean()
    assert whole == pytest.approx(0.7, abs=0.05)


@pytest.mark.parametrize("seed", range(5))
def test_augmented_box_follows_the_sign(seed):
    img, box = _painted()
    out, new = augment(torch.as_tensor(img)[None], box, margin=0.45, rotation=0, color=0, blur=0,
                       generator=torch.Generator().manual_seed(seed))
    seen = _white_box((out[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    assert np.abs(seen - new[0].numpy()).max() < 2.5 / 64  # within the resampling blur
    assert (new >= 0).all() and (new <= 1).all()


def test_shifted_views(tmp_path):
    rows = []
    for i, (w, h, box) in enumerate([(100, 80, (20, 10, 80, 70)), (50, 50, (10, 10, 40, 40)), (90, 90, (0, 20, 60, 70))]):
        a = np.zeros((h, w, 3), np.uint8)
        a[box[1]:box[3], box[0]:box[2]] = 255
        a[:, 0] = (0, 0, 255)  # left edge, to see replication
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        rows.append({"path": str(tmp_path / f"{i}.png"), "width": w, "height": h, "left": box[0], "top": box[1],
                     "right": box[2], "bottom": box[3]})
    images, boxes, keep = shifted_views(pd.DataFrame(rows), 96, seed=3)
    assert keep.tolist() == [0, 2]  # the 30-px box is too small
    for img, b in zip(images, boxes):
        inner = img.copy()
        inner[..., 2] = np.where(inner[..., 0] < 128, 0, inner[..., 2])  # ignore the blue edge
        assert np.abs(_white_box(inner) - b.numpy()).max() < 2.5 / 96
    # The third image's box touches the left edge: its window starts left of the image, filled with the edge.
    assert boxes[1, 0] > 0 and (images[1][:, 0, 2] > 200).all()


def test_smaller_output_size_keeps_the_boxes():
    # Progressive resizing: the same draw at a smaller size gives the same relative boxes, and the
    # sign where the box says.
    img, box = _painted()
    full, b_full = augment(torch.as_tensor(img)[None], box, margin=0.45, rotation=0, color=0, blur=0,
                           generator=torch.Generator().manual_seed(3))
    small, b_small = augment(torch.as_tensor(img)[None], box, margin=0.45, rotation=0, color=0, blur=0,
                             generator=torch.Generator().manual_seed(3), size=32)
    assert full.shape[-2:] == (64, 64) and small.shape[-2:] == (32, 32)
    assert torch.equal(b_full, b_small)
    seen = _white_box((small[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    assert np.abs(seen - b_small[0].numpy()).max() < 2.5 / 32


def test_occlusion_covers_part_of_the_sign_on_its_share_of_images():
    from tsloc.crops.augment import occlude
    n, box = 400, torch.tensor([0.25, 0.3, 0.75, 0.8])
    x = torch.zeros(n, 3, 64, 64)
    out = occlude(x.clone(), box.repeat(n, 1), 0.5, torch.Generator().manual_seed(0))
    covered = (out != 0).any(1)                                  # (N, H, W): painted pixels
    hit = covered.flatten(1).any(1)
    assert hit.float().mean() == pytest.approx(0.5, abs=0.08)   # the share asked
    ys, xs = torch.nonzero(covered.any(0), as_tuple=True)
    assert xs.min() >= 0.25 * 64 - 1 and xs.max() < 0.75 * 64 + 1 and ys.min() >= 0.3 * 64 - 1 and ys.max() < 0.8 * 64 + 1
    area = covered.flatten(1).float().mean(1)[hit] / (0.5 * 0.5)  # share of the box covered
    assert area.min() > 0.15 ** 2 * 0.5 and area.max() < 0.4 ** 2 * 1.5 and area.mean() > 0.05
    one = out[hit.nonzero()[0, 0]]                               # a flat colour: one value per channel
    assert one[:, covered[hit.nonzero()[0, 0]]].std(1).max() == 0


def test_erase_zero_draws_nothing_so_runs_repeat_as_before():
    img, box = _painted()
    images = torch.as_tensor(img)[None].repeat(8, 1, 1, 1)
    kw = dict(margin=0.45, rotation=10, color=0.3, blur=0.3, recrop=0.3)
    a, _ = augment(images, box.repeat(8, 1), generator=torch.Generator().manual_seed(3), **kw)
    g = torch.Generator().manual_seed(3)
    b, _ = augment(images, box.repeat(8, 1), generator=g, erase=0.0, **kw)
    c, _ = augment(images, box.repeat(8, 1), generator=torch.Generator().manual_seed(3), erase=1.0, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
