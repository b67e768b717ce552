"""RoIAlign (Mask R-CNN, He et al. 2017) in pure, vectorized torch — torchvision's exact semantics.

Ground floor (``pkd.roi``): the region extraction (``pkd.pipeline.backbones``, re-exported by
``pkd.pipeline.roi_align``) and the region-backbone pre-training (``pkd.train.pretrain.regions``)
pool through this one implementation, so training and extraction see the same features. It also
holds :func:`resized_size` (the image processor's resize rule without crop) and
:func:`pool_regions` (boxes in pixels -> map coordinates -> RoIAlign -> mean / grid pooling),
and the box overlap :func:`box_iou` (re-exported by ``pkd.pipeline.boxes``) that region
pre-training samples RoIs with and the store probe matches regions with.

For a box ``(x1, y1, x2, y2)`` in image pixels and an output grid of ``oh x ow`` bins:

    offset = 0.5 if aligned else 0
    start  = (x1 * spatial_scale - offset, y1 * spatial_scale - offset)
    size   = (x2 - x1, y2 - y1) * spatial_scale        (clamped to >= 1 when not aligned)
    bin    = size / (ow, oh)
    grid   = sampling_ratio if > 0 else ceil(size / (ow, oh))     samples per bin per axis
    sample (ph, iy) at y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h  (same for x)
    out[c, ph, pw] = mean over the grid_h * grid_w samples of bilinear(feature[c], y, x)

``bilinear`` follows torchvision's CPU kernel: a sample with ``y < -1`` or ``y > H`` (same for
x) contributes 0; otherwise ``y <= 0`` is clamped to 0 and a sample at or past the last row reads
the last row. Averaging divides by ``max(grid_h * grid_w, 1)``, counting the zero samples.

Everything above is separable in y and x (validity, clamping, bilinear weights and the mean
all factor), so each box becomes two interpolation matrices ``Wy (oh, H)`` and ``Wx (ow, W)`` and

    out[k] = Wy[k] @ features[b_k] @ Wx[k].T          (per channel)

— two batched matmuls, no per-sample gather, differentiable w.r.t. ``features``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 24  # bound on the (boxes, oh, C, W) intermediate of one matmul chunk
BoxesArg = Tensor | Sequence[Tensor]  # (K, 5) [batch_idx, x1, y1, x2, y2] or one (K_i, 4) per image


def to_rois(boxes: BoxesArg, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` from either accepted box format."""
    if isinstance(boxes, Tensor):
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise ValueError("boxes tensor must be (K, 5) with a batch index, got "
                             f"{tuple(boxes.shape)}")
        return boxes.to(device=device, dtype=dtype)
    rows = []
    for b, per_image in enumerate(boxes):
        per_image = torch.as_tensor(per_image, device=device, dtype=dtype).reshape(-1, 4)
        index = torch.full((len(per_image), 1), float(b), device=device, dtype=dtype)
        rows.append(torch.cat([index, per_image], dim=1))
    if not rows:
        return torch.zeros((0, 5), device=device, dtype=dtype)
    return torch.cat(rows, dim=0)


def _axis_weights(start: Tensor, size: Tensor, bins: int, length: int,
                  sampling_ratio: int) -> Tensor:
    """Interpolation matrix ``(K, bins, length)`` of one axis: the mean of the bilinear weights of
    each bin's samples (torchvision's clamping and zero rules, see the module docstring)."""
    bin_size = size / bins  # (K,)
    if sampling_ratio > 0:
        grid = torch.full_like(size, float(sampling_ratio))
    else:
        grid = torch.ceil(size / bins)  # (K,) adaptive: may be 0 for an empty box
    n_max = max(int(grid.max().item()) if grid.numel() else 0, 1)
    i = torch.arange(n_max, device=size.device, dtype=size.dtype)  # (G,) sample index in a bin
    p = torch.arange(bins, device=size.device, dtype=size.dtype)  # (P,) bin index
    safe_grid = grid.clamp(min=1)[:, None, None]
    # (K, P, G) sample coordinates
    pos = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
           + (i[None, None, :] + 0.5) * bin_size[:, None, None] / safe_grid)
    used = (i[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0.0)
    low = pos.floor().clamp(max=length - 1)
    at_end = low >= length - 1  # samples past the last row read the last row with weight 1
    pos = torch.where(at_end, low, pos)
    high = torch.where(at_end, low, low + 1)
    frac = pos - low  # (K, P, G) weight of the high row; 1 - frac for the low row
    scale = used.to(size.dtype) / safe_grid  # zero samples still count in the mean
    weights = torch.zeros((*pos.shape[:2], length), device=size.device, dtype=size.dtype)
    weights = weights.scatter_add(2, low.long(), (1 - frac) * scale)  # (K, P, length)
    return weights.scatter_add(2, high.long(), frac * scale)


def roi_align(features: Tensor, boxes: BoxesArg, output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = True) -> Tensor:
    """Pool ``features`` (B, C, H, W) on each box -> (K, C, oh, ow), pure torch.

    ``boxes``: a (K, 5) tensor ``[batch_index, x1, y1, x2, y2]`` or a list with one (K_i, 4)
    tensor per image (rows are returned in concatenation order). Box coordinates are multiplied
    by ``spatial_scale`` to reach feature-map coordinates. Same arguments and results as
    ``torchvision.ops.roi_align``.
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, channels, height, width = features.shape
    # coordinates in float32 at least, so half-precision maps still sample at the right place
    coord_dtype = torch.promote_types(features.dtype, torch.float32)
    rois = to_rois(boxes, features.device, coord_dtype)  # (K, 5)
    offset = 0.5 if aligned else 0.0
    start = rois[:, 1:] * spatial_scale - offset  # (K, 4)
    size_x, size_y = start[:, 2] - start[:, 0], start[:, 3] - start[:, 1]
    if not aligned:
        size_x, size_y = size_x.clamp(min=1.0), size_y.clamp(min=1.0)
    wy = _axis_weights(start[:, 1], size_y, oh, height, sampling_ratio).to(features.dtype)
    wx = _axis_weights(start[:, 0], size_x, ow, width, sampling_ratio).to(features.dtype)
    batch_index = rois[:, 0].long()
    step = max(1, CHUNK_ELEMENTS // (oh * channels * width))  # boxes per matmul chunk
    order, pooled = [], [features.new_zeros((0, channels, oh, ow))]
    for b in batch_index.unique().tolist():
        for chunk in (batch_index == b).nonzero().squeeze(1).split(step):
            order.append(chunk)
            pooled.append(_pool_image(features[b], wy[chunk], wx[chunk]))
    if not order:
        return pooled[0]
    inverse = torch.argsort(torch.cat(order))  # back to the input box order
    return torch.cat(pooled)[inverse]  # (K, C, oh, ow)


def _pool_image(fmap: Tensor, wy: Tensor, wx: Tensor) -> Tensor:
    """``out[k] = wy[k] @ fmap @ wx[k].T`` per channel as two large matmuls.

    fmap (C, H, W); wy (k, oh, H); wx (k, ow, W) -> (k, C, oh, ow).
    """
    channels, height, width = fmap.shape
    k, oh, ow = wy.shape[0], wy.shape[1], wx.shape[1]
    rows = wy.reshape(k * oh, height) @ fmap.transpose(0, 1).reshape(height, channels * width)
    rows = rows.reshape(k, oh * channels, width)  # (k, oh*C, W)
    pooled = torch.bmm(rows, wx.transpose(1, 2))  # (k, oh*C, ow)
    return pooled.reshape(k, oh, channels, ow).transpose(1, 2)  # (k, C, oh, ow)


@functools.cache
def _torchvision_roi_align():
    """``torchvision.ops.roi_align`` when torchvision imports and its ops load, else None."""
    try:
        from torchvision.ops import roi_align as tv_roi_align  # torchvision: optional backend
    except Exception:  # not installed, or a build whose compiled ops fail to load
        return None
    return tv_roi_align


def roi_align_op(features: Tensor, boxes: BoxesArg, output_size: int | tuple[int, int],
                 spatial_scale: float = 1.0, sampling_ratio: int = -1,
                 aligned: bool = True) -> Tensor:
    """:func:`roi_align` through torchvision's compiled kernel when available, else pure torch."""
    tv_roi_align = _torchvision_roi_align()
    if tv_roi_align is not None:
        rois = to_rois(boxes, features.device, features.dtype)
        try:
            return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
        except Exception:  # e.g. a CUDA-only build on CPU: fall back to the same math in torch
            pass
    return roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)



def resized_size(processor, width: int, height: int) -> tuple[int, int]:
    """``(w, h)`` the processor's size rule gives an image of ``width x height``, without crop."""
    size = getattr(processor, "size", None)
    if not getattr(processor, "do_resize", True) or size is None:
        return width, height
    if getattr(size, "height", None) and getattr(size, "width", None):
        return int(size.width), int(size.height)
    short = getattr(size, "shortest_edge", None)
    if not short:
        return width, height
    scale = short / min(width, height)
    long_cap = getattr(size, "longest_edge", None)
    if long_cap and max(width, height) * scale > long_cap:
        scale = long_cap / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def pool_regions(fmaps: Tensor, boxes: Sequence[Tensor], sizes: Sequence[tuple[float, float]],
                 output_size: int = 7, sampling_ratio: int = -1, grid: int = 0) -> Tensor:
    """Features of each image's boxes pooled from its map, rows in concatenation order.

    ``fmaps`` (B, C, Hf, Wf); ``boxes[i]`` (N_i, 4) x1y1x2y2 in pixels of an image of
    ``sizes[i] = (W, H)``. Boxes go to map coordinates ``x * Wf / W``, ``y * Hf / H``, then
    ``roi_align_op(aligned=True)`` -> (N, C, o, o) and the mean over the o x o grid -> (N, C)
    (``grid=0``, bottom-up style) or an adaptive average to K x K cells flattened channel-major
    -> (N, C K²) (``grid=K``). Differentiable w.r.t. ``fmaps`` (the pure-torch path).
    """
    _, _, map_h, map_w = fmaps.shape
    scaled = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
              * torch.tensor([map_w / w, map_h / h] * 2) for b, (w, h) in zip(boxes, sizes,
                                                                              strict=True)]
    rois = to_rois([b.to(fmaps.device) for b in scaled], fmaps.device, torch.float32)  # (N, 5)
    pooled = roi_align_op(fmaps, rois, output_size, 1.0, sampling_ratio, aligned=True)
    if grid:
        return torch.nn.functional.adaptive_avg_pool2d(pooled, grid).flatten(1)
    return pooled.mean(dim=(2, 3))  # (N, C)


def box_area(boxes: Tensor) -> Tensor:
    """``(x2 - x1) * (y2 - y1)``, zero for inverted boxes."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU ``(N, M)`` = intersection / (area_a + area_b - intersection); 0 where the
    union is empty."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)  # (N, M)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
