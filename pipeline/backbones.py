"""Region backbones: a frozen transformers vision model whose feature map is RoIAlign-pooled on
given boxes, one feature vector per box.

Used for ``given:`` boxes (which carry no features) and for the DistillVLM aligned teacher
(``--boxes-from``: the teacher's backbone pooled on exactly the student's boxes, so row i of both
stores is the same region).

Per image (no batching across different sizes, no crop, no padding — so pixels map exactly):

1. resize with the processor's own size rule, but never crop: ``height/width`` -> that size;
   ``shortest_edge`` (+ ``longest_edge``) -> aspect kept; the processor then only rescales and
   normalizes (``do_resize=False``). Images with equal resized sizes share one forward pass.
2. feature map ``(C, Hf, Wf)``: ``last_hidden_state`` if it is ``(B, C, H, W)`` (ResNet,
   ConvNeXt, ...), or ViT tokens ``(B, T, C)`` whose last ``(Hp/p) * (Wp/p)`` tokens are the patch
   grid (CLS / register tokens first are dropped).
3. boxes in original pixels -> map coordinates: ``x * Wf / W``, ``y * Hf / H`` (exact when the
   network stride divides the resized size; otherwise off by less than one map cell per side).
4. ``roi_align_op(aligned=True, output_size, sampling_ratio)`` -> ``(N, C, o, o)``, then
   ``pooling="mean"``: mean over the ``o x o`` grid -> ``(N, C)`` (bottom-up style); or
   ``pooling="grid:K"``: adaptive average to ``K x K`` cells, flattened channel-major ->
   ``(N, C K²)``, which keeps the coarse layout inside the box (an object's shape survives: on the
   synthetic benchmark a linear probe of shape reads 40.8% / 57.4% / 67.3% from mean / grid:2 /
   grid:3 features of the demo's random ResNet, chance 25%; ``pkd stores probe``).

A whole-image box then averages the whole map; when the map side is a multiple of
``output_size`` every adaptive sample falls on a cell centre and the result is exactly the
global average of the map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pkd.errors import PkdError
from pkd.hf.fingerprint import (
    check_weight_files,
    folder_weights_sha256,
    image_processor_file,
    image_processor_sha256,
    model_folder,
)
from pkd.hf.hashing import config_sha256
from pkd.hf.loading import first_line, load_errors, model_identity, quiet_loading, resolve_model
from pkd.roi import pool_regions, resized_size


def load_image_processor(model: str):
    """The model's PIL image processor (the torchvision-backed "fast" ones are never used)."""
    from transformers import AutoImageProcessor  # transformers: only when a backbone is built

    source, local = resolve_model(model)
    try:
        return AutoImageProcessor.from_pretrained(source, backend="pil", local_files_only=local)
    except load_errors() as err:
        raise PkdError(f"{model}: cannot load its image processor ({first_line(err)})") from err


def load_pretrained(loader, model: str, what: str, where: str | None = None):
    """``loader.from_pretrained(model)`` (weights checked first), a PkdError naming ``where``
    (default: the model) otherwise; returns ``(net, folder)``."""
    source, local = resolve_model(model)
    folder = model_folder(source, local)
    check_weight_files(folder)  # a truncated download: one line, not the loader's traceback
    try:
        return loader.from_pretrained(source, local_files_only=local), folder
    except load_errors() as err:
        raise PkdError(f"{where or model}: cannot load {what} ({first_line(err)})") from err


def attach_frozen(owner, net: torch.nn.Module, folder, model: str, device: str) -> None:
    """Set ``owner``'s frozen ``model`` (eval, no grad, on ``device``), its image ``processor``
    and what identifies them (``model_id``, ``device``, ``weights_hash``, ``processor_hash``,
    ``processor_file``): shared by the backbones and the HF detectors."""
    owner.model = net.to(device).eval().requires_grad_(False)
    owner.processor = load_image_processor(model)
    owner.model_id, owner.device = model, device
    owner.weights_hash = folder_weights_sha256(folder)
    owner.processor_hash = image_processor_sha256(folder)
    owner.processor_file = image_processor_file(folder, model)


def forward_error(err: Exception, model: str, processor_file: str, shape) -> PkdError | None:
    """A one-line PkdError for a forward pass that refused the processor's pixels (a size the
    model was not built for, ...); None for errors that are not about the input (out of memory)."""
    if isinstance(err, torch.OutOfMemoryError) or not isinstance(err, ValueError | RuntimeError):
        return None
    return PkdError(f"{model}: the model refuses the {tuple(shape)} pixels its image processor "
                    f"({processor_file}) makes: {first_line(err)}")


class RegionBackbone:
    """A frozen vision backbone pooled on boxes: ``pool(images, boxes) -> [(N, C)]``.

    ``model``: a hub id or local folder loadable by ``AutoModel`` plus its PIL image processor.
    ViT-style models with fixed position embeddings need a processor with a fixed
    ``height``/``width`` (an aspect-keeping ``shortest_edge`` size would change the token grid).
    """

    def __init__(self, model: str, device: str = "cpu", output_size: int = 7,
                 sampling_ratio: int = -1, pooling: str = "mean"):
        from transformers import AutoModel  # transformers: loaded only when a backbone is built

        quiet_loading()
        net, folder = load_pretrained(AutoModel, model, "a transformers backbone")
        net = getattr(net, "vision_model", net)  # CLIP/BLIP-style wrappers: the image tower
        attach_frozen(self, net, folder, model, device)
        self.output_size, self.sampling_ratio = output_size, sampling_ratio
        self.grid = grid_size(pooling, output_size)  # 0 = mean pooling
        self.pooling = pooling
        config = self.model.config
        sizes = getattr(config, "hidden_sizes", None)
        self.channels = int(sizes[-1]) if sizes else int(config.hidden_size)  # C of the map
        self.dim = self.channels * max(1, self.grid) ** 2  # features per box
        self.patch_size = getattr(config, "patch_size", None)  # ViT-style token grids only

    def provenance(self) -> dict:
        return {"model": model_identity(self.model_id),
                "config_sha256": config_sha256(self.model.config),
                "weights_sha256": self.weights_hash,
                "image_processor_sha256": self.processor_hash,
                "pooling": "roi_align_mean" if not self.grid else f"roi_align_grid{self.grid}",
                "output_size": self.output_size, "sampling_ratio": self.sampling_ratio}

    @torch.no_grad()
    def feature_maps(self, images: Sequence[Image.Image]) -> list[Tensor]:
        """One ``(C, Hf, Wf)`` map per image (see the module docstring for resize rules)."""
        sizes = [resized_size(self.processor, *img.size) for img in images]
        maps: list[Tensor | None] = [None] * len(images)
        for size in dict.fromkeys(sizes):  # distinct sizes, first-seen order
            group = [i for i, s in enumerate(sizes) if s == size]
            resample = int(getattr(self.processor, "resample", Image.Resampling.BILINEAR))
            resized = [images[i].convert("RGB").resize(size, resample) for i in group]
            pixels = self.processor(images=resized, do_resize=False, do_center_crop=False,
                                    return_tensors="pt")["pixel_values"].to(self.device)
            try:
                hidden = self.model(pixel_values=pixels).last_hidden_state
            except Exception as err:
                refused = forward_error(err, self.model_id, self.processor_file, pixels.shape)
                if refused is None:
                    raise
                raise refused from err
            fmap = self._as_map(hidden, pixels.shape[-2:])  # (b, C, Hf, Wf)
            for j, i in enumerate(group):
                maps[i] = fmap[j]
        return maps

    def _as_map(self, hidden: Tensor, pixel_hw: torch.Size) -> Tensor:
        if hidden.ndim == 4:
            return hidden  # (B, C, Hf, Wf)
        if hidden.ndim != 3 or not self.patch_size:
            raise PkdError(f"{self.model_id}: last_hidden_state of shape {tuple(hidden.shape)} "
                           "is neither a (B, C, H, W) map nor ViT tokens with a patch_size")
        grid_h, grid_w = pixel_hw[0] // self.patch_size, pixel_hw[1] // self.patch_size
        tokens = hidden[:, -grid_h * grid_w:]  # (B, Hf*Wf, C): drop CLS / register tokens
        return tokens.transpose(1, 2).reshape(len(hidden), -1, grid_h, grid_w)

    @torch.no_grad()
    def pool(self, images: Sequence[Image.Image],
             boxes_per_image: Sequence[Tensor | np.ndarray]) -> list[Tensor]:
        """RoIAlign + pooling: one float32 ``(N_i, dim)`` CPU tensor per image, rows in box
        order. ``boxes_per_image[i]``: ``(N_i, 4)`` x1y1x2y2 in pixels of ``images[i]``."""
        if len(images) != len(boxes_per_image):
            raise ValueError(f"{len(images)} images but {len(boxes_per_image)} box sets")
        out = []
        for img, fmap, boxes in zip(images, self.feature_maps(images), boxes_per_image,
                                    strict=True):
            b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
            feats = pool_regions(fmap[None], [b], [img.size], self.output_size,
                                 self.sampling_ratio, self.grid)  # (N, dim), as pre-training
            out.append(feats.float().cpu())  # (N, dim)
        return out


def grid_size(pooling: str, output_size: int) -> int:
    """0 for ``"mean"``, K for ``"grid:K"`` (1 <= K <= output_size); PkdError otherwise."""
    if pooling == "mean":
        return 0
    k = pooling.removeprefix("grid:")
    if pooling.startswith("grid:") and k.isdigit() and 1 <= int(k) <= output_size:
        return int(k)
    raise PkdError(f"--pooling {pooling!r}: expected 'mean' or 'grid:K' with 1 <= K <= "
                   f"{output_size}")
