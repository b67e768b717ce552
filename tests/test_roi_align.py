"""RoIAlign: hand-computed values, an independent loop reference, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from pkd.pipeline.roi_align import roi_align, roi_align_op

torch.set_num_threads(1)

# 4x4 ramp f[y, x] = x + 4y. Bilinear interpolation of a linear function is exact, so inside
# the map a sample at (x, y) reads x + 4y, and the mean of a bin's samples is
# mean(x) + 4 * mean(y). Clamping: x <= 0 reads column 0, x >= 3 reads column 3 (same for y);
# a sample with x < -1 or x > 4 (W) reads 0.
RAMP = (torch.arange(4.0)[None, :] + 4 * torch.arange(4.0)[:, None])[None, None]  # (1, 1, 4, 4)


def _one(box, out=1, ratio=-1, aligned=True, scale=1.0, fmap=RAMP):
    return roi_align(fmap, [torch.tensor([box])], out, scale, ratio, aligned)[0, 0]


def test_not_aligned_two_samples_per_axis():
    # box [0,0,2,2], 1 bin, 2x2 samples: start 0, bin 2, samples at 0 + (i + .5) * 1 = 0.5, 1.5
    # mean x = 1, mean y = 1 -> 1 + 4 * 1 = 5
    assert _one([0, 0, 2, 2], ratio=2, aligned=False).item() == pytest.approx(5.0)


def test_aligned_shifts_half_a_pixel():
    # aligned: start -0.5, samples at -0.5 + 0.5 = 0 and 1 -> mean x = mean y = 0.5 -> 2.5
    assert _one([0, 0, 2, 2], ratio=2, aligned=True).item() == pytest.approx(2.5)


def test_adaptive_grid_on_two_by_two_output():
    # aligned, box [0,0,4,4], 2x2 bins: size 4, bin 2, grid ceil(4 / 2) = 2 samples per axis.
    # bin 0 samples at -0.5 + 0.5, -0.5 + 1.5 = 0, 1 (mean 0.5); bin 1 at 2, 3 (mean 2.5)
    # out = mean_x + 4 mean_y = [[0.5 + 2, 2.5 + 2], [0.5 + 10, 2.5 + 10]]
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]])
    assert torch.allclose(_one([0, 0, 4, 4], out=2), expected)
    # spatial_scale 0.5 maps the box [0,0,8,8] onto the same feature-map box
    assert torch.allclose(_one([0, 0, 8, 8], out=2, scale=0.5), expected)


def test_sampling_ratio_one_takes_bin_centres():
    # not aligned, box [0,0,4,4], 2x2 bins, 1 sample: bin centres at 1 and 3
    # -> [[1 + 4, 3 + 4], [1 + 12, 3 + 12]]
    out = _one([0, 0, 4, 4], out=2, ratio=1, aligned=False)
    assert torch.allclose(out, torch.tensor([[5.0, 7.0], [13.0, 15.0]]))


def test_box_partly_outside_the_map():
    # not aligned, box [2,2,6,6], 1 bin, 2x2 samples: start 2, bin 4, samples at 3 and 5.
    # (x, y) = (3, 3) reads the corner 3 + 12 = 15 (last row/column clamp); any sample with
    # coordinate 5 > 4 reads 0. The mean counts all 4 samples: 15 / 4 = 3.75
    assert _one([2, 2, 6, 6], ratio=2, aligned=False).item() == pytest.approx(3.75)


def test_clamping_near_the_left_edge():
    # not aligned, box [-1.5, 0, 0.5, 1], 1 sample: x = -1.5 + 1 = -0.5 is in [-1, 0] -> clamped
    # to 0; y: size 1, sample at 0.5. value = 0 + 4 * 0.5 = 2
    assert _one([-1.5, 0, 0.5, 1], ratio=1, aligned=False).item() == pytest.approx(2.0)
    # box [-3, 0, -1, 1]: x = -3 + 1 = -2 < -1 -> the sample reads 0
    assert _one([-3, 0, -1, 1], ratio=1, aligned=False).item() == 0.0


def test_tiny_boxes():
    # not aligned: size 0.2 is raised to 1, sample at 1 + 0.5 = 1.5 -> 1.5 + 4 * 1.5 = 7.5
    assert _one([1, 1, 1.2, 1.2], ratio=1, aligned=False).item() == pytest.approx(7.5)
    # aligned keeps size 0.2: start 0.5, sample at 0.5 + 0.1 = 0.6 -> 0.6 + 2.4 = 3.0
    assert _one([1, 1, 1.2, 1.2], ratio=1, aligned=True).item() == pytest.approx(3.0)
    # aligned, adaptive, empty box: ceil(0 / 1) = 0 samples -> 0
    assert _one([1, 1, 1, 1], aligned=True).item() == 0.0


def test_nonlinear_map_bilinear_weights():
    # f = [[0, 1], [2, 7]], not aligned, box [0,0,1,1], 1 sample at (0.5, 0.5):
    # 0.25 * (0 + 1 + 2 + 7) = 2.5 (a plane through three corners would give 1.5 or 3.5)
    fmap = torch.tensor([[[[0.0, 1.0], [2.0, 7.0]]]])
    assert _one([0, 0, 1, 1], ratio=1, aligned=False, fmap=fmap).item() == pytest.approx(2.5)


# --- an independent slow reference: torchvision's CPU kernel, sample by sample -------------

def _bilinear_ref(f, y, x):
    height, width = f.shape[-2:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(f.shape[0], dtype=f.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * f[:, y_low, x_low] + hy * lx * f[:, y_low, x_high]
            + ly * hx * f[:, y_high, x_low] + ly * lx * f[:, y_high, x_high])


def _roi_align_ref(features, rois, out, scale, ratio, aligned):
    offset = 0.5 if aligned else 0.0
    result = torch.zeros(len(rois), features.shape[1], out, out, dtype=features.dtype)
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sx, sy = x1 * scale - offset, y1 * scale - offset
        rw, rh = x2 * scale - offset - sx, y2 * scale - offset - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / out, rh / out
        gh = ratio if ratio > 0 else math.ceil(rh / out)
        gw = ratio if ratio > 0 else math.ceil(rw / out)
        count = max(gh * gw, 1)
        for ph in range(out):
            for pw in range(out):
                acc = torch.zeros(features.shape[1], dtype=features.dtype)
                for iy in range(gh):
                    y = sy + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sx + pw * bw + (ix + 0.5) * bw / gw
                        acc += _bilinear_ref(features[int(b)], y, x)
                result[k, :, ph, pw] = acc / count
    return result


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [-1, 1, 2])
def test_matches_loop_reference_on_random_boxes(aligned, ratio):
    gen = torch.Generator().manual_seed(7 + ratio + 10 * aligned)
    features = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64)
    xy = torch.rand(12, 2, generator=gen, dtype=torch.float64) * 20 - 4  # some off the map
    wh = torch.rand(12, 2, generator=gen, dtype=torch.float64) * 14
    batch = torch.randint(0, 2, (12, 1), generator=gen).double()
    rois = torch.cat([batch, xy, xy + wh], dim=1)
    got = roi_align(features, rois, 3, 0.5, ratio, aligned)
    want = _roi_align_ref(features, rois, 3, 0.5, ratio, aligned)
    assert torch.allclose(got, want, atol=1e-12)


def test_list_boxes_keep_order_and_match_batch_index_format():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 2, 5, 5, generator=gen)
    per_image = [torch.tensor([[0.0, 0, 4, 4], [1, 1, 3, 2]]), torch.zeros(0, 4),
                 torch.tensor([[2.0, 0, 5, 5]])]
    rois = torch.tensor([[0.0, 0, 0, 4, 4], [0, 1, 1, 3, 2], [2, 2, 0, 5, 5]])
    got = roi_align(features, per_image, 2)
    assert got.shape == (3, 2, 2, 2)
    assert torch.equal(got, roi_align(features, rois, 2))
    # row 2 belongs to image 2 only
    assert torch.allclose(got[2], roi_align(features[2:3], [per_image[2]], 2)[0])


def test_no_boxes_gives_empty_output():
    assert roi_align(torch.randn(1, 4, 5, 5), [torch.zeros(0, 4)], 3).shape == (0, 4, 3, 3)


def test_half_precision_samples_like_float():
    features = torch.randn(1, 4, 6, 6)
    boxes = [torch.tensor([[0.3, 0.7, 5.1, 4.9]])]
    half = roi_align(features.half(), boxes, 2).float()
    assert torch.allclose(half, roi_align(features, boxes, 2), atol=1e-2)


def test_gradients_flow_to_features():
    features = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.2, 0.4, 3.7, 3.1], [0, -0.8, 1.0, 2.0, 5.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, 2, 1.0, 2, True), (features,))


def test_op_falls_back_to_pure_torch():
    features = torch.randn(1, 3, 5, 5)
    boxes = [torch.tensor([[0.0, 0.0, 5.0, 3.0]])]
    assert torch.allclose(roi_align_op(features, boxes, 2), roi_align(features, boxes, 2),
                          atol=1e-6)
