"""Image readers the GPU benchmark compares with pkd's own (pkd has none of them yet): CPU
decode threads, GPU ``decode_jpeg``, decoded tensors in RAM; the stage that runs them in pkd's
runner, and the bare forward pass (the limit)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from gpu_inputs import crop_size, resized_size
from gpu_table import sync

from pkd.pipeline.foundation import FoundationModel, _numpy
from pkd.pipeline.stages import FoundationImageStage, batches, empty_arrays, load_images
from pkd.prefetch import prefetch
from pkd.stores import Failure


def set_attention(fm: FoundationModel, attention: str) -> None:
    fm.model.set_attn_implementation(attention)


@torch.inference_mode()
def encode_pixels(fm: FoundationModel, pixels: torch.Tensor) -> dict[str, np.ndarray]:
    """What :meth:`FoundationModel.encode_images` does after its image processor (CLIP)."""
    with fm._autocast():
        out = fm.model.get_image_features(pixel_values=pixels.to(fm.device))
    return {"vision_tokens": _numpy(out.last_hidden_state, fm.spec.token_dtype),
            "image_embeds": _numpy(F.normalize(out.pooler_output.float(), dim=-1), "float32")}


class ReaderStage(FoundationImageStage):
    """pkd's image stage (store spec, rows, failures) with another image reader:
    ``read(ids, positions) -> (ok positions, pixel batch (B, 3, H, W) on the device, failures)``,
    run in pkd's prefetch thread one batch ahead of the forward pass. On CUDA the reader's copies
    and kernels go to a side stream, so they overlap the forward pass of the batch before."""

    run_many = None  # the runner then calls run() shard by shard: this stage's own reader

    def __init__(self, fm: FoundationModel, source, batch_size: int, read: Callable):
        super().__init__(fm, source, batch_size, {**fm.provenance(), "stage": "foundation/images"})
        self.read = read
        self.side = torch.cuda.Stream() if fm.device.type == "cuda" else None

    def _read(self, ids, r: range):
        if self.side is None:
            return (*self.read(ids, r), None)
        with torch.cuda.stream(self.side):
            pos, pixels, failures = self.read(ids, r)
            done = torch.cuda.Event()
            done.record(self.side)
        return pos, pixels, failures, done

    def run(self, ids):
        arrays, failures = empty_arrays(self._spec, len(ids)), []
        for pos, pixels, failed, done in prefetch(lambda r: self._read(ids, r),
                                                  batches(len(ids), self.batch_size)):
            failures += failed
            if pos:
                if done is not None:  # the forward waits for the reader's stream, and the
                    torch.cuda.current_stream().wait_event(done)  # allocator for the forward
                    pixels.record_stream(torch.cuda.current_stream())
                out = encode_pixels(self.model, pixels)
                for name in arrays:
                    arrays[name][pos] = out[name]
        return arrays, failures


def _pinned(shape: tuple, dtype: torch.dtype, device: str) -> torch.Tensor:
    """A host buffer for one batch: page-locked when it is copied to a GPU (a new one per batch:
    torch's pinned allocator keeps a block until the copies that read it are done)."""
    return torch.empty(shape, dtype=dtype, pin_memory=device == "cuda")


def _normalizer(processor, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (B, 3, H, W) -> the processor's rescale + normalize, float32 on ``device``."""
    mean = torch.tensor(processor.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, device=device).view(1, 3, 1, 1)
    sync(device)  # they are read on the readers' side stream
    scale = float(processor.rescale_factor)
    return lambda x: (x.to(device, non_blocking=True).float() * scale - mean) / std


def cpu_thread_reader(source, processor, pool: ThreadPoolExecutor, device: str) -> Callable:
    """Each image through pkd's ``load_images`` (PIL, failures) + the PIL processor, in
    ``pool``, written straight into one (pinned) batch buffer; one copy to the device."""
    ch, cw = crop_size(processor)

    def one(ids, p: int, row: np.ndarray) -> list:
        _, images, failures = load_images(source, ids, range(p, p + 1))
        if images:
            row[...] = processor(images=images, return_tensors="np")["pixel_values"][0]
        return failures

    def read(ids, r: range):
        buf = _pinned((len(r), 3, ch, cw), torch.float32, device)
        rows = buf.numpy()
        failures = [f for fs in pool.map(lambda i: one(ids, r[i], rows[i]), range(len(r)))
                    for f in fs]
        bad = {int(f.id) for f in failures}
        keep = [i for i, p in enumerate(r) if int(ids[p]) not in bad]
        if not keep:
            return [], None, failures
        if len(keep) < len(r):
            buf = buf[keep]
        return [r[i] for i in keep], buf.to(device, non_blocking=True), failures

    return read


def torchvision_decoder(device: str) -> Callable:
    """``decode(list of uint8 file-byte tensors) -> list of (3, H, W) uint8 on device``:
    ``torchvision.io.decode_jpeg`` (batched nvjpeg on CUDA), RGB."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return lambda datas: decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)


def gpu_decode_reader(source, processor, pool: ThreadPoolExecutor, device: str,
                      decode_jpeg: Callable | None = None) -> Callable:
    """File bytes read in ``pool``; ``decode_jpeg`` of the batch (default
    :func:`torchvision_decoder`) on the GPU; resize (shorter side, bicubic, antialias), centre
    crop, rescale + normalize there."""
    decode_jpeg = decode_jpeg or torchvision_decoder(device)
    side, (ch, cw) = processor.size["shortest_edge"], crop_size(processor)
    normalize = _normalizer(processor, device)

    def load(ids, p: int):
        path = source.image_path(int(ids[p]))
        if path is None:
            return p, None, Failure(int(ids[p]), "", "no image file for this id")
        return p, torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), None

    def decode(datas: list[torch.Tensor], ids, pos: list[int]):
        try:
            return decode_jpeg(datas), []
        except RuntimeError:  # one bad file: decode one by one, the bad ones become failures
            images, failures = [], []
            for data, p in zip(datas, pos, strict=True):
                try:
                    images.append(decode_jpeg([data])[0])
                except RuntimeError as err:
                    images.append(None)
                    path = source.image_path(int(ids[p]))
                    failures.append(Failure(int(ids[p]), str(path), f"decode_jpeg: {err}"))
            return images, failures

    def read(ids, r: range):
        got = list(pool.map(lambda p: load(ids, p), r))
        failures = [f for _, _, f in got if f is not None]
        ok = [(p, d) for p, d, _ in got if d is not None]
        images, bad = decode([d for _, d in ok], ids, [p for p, _ in ok])
        keep = [(p, im) for (p, _), im in zip(ok, images, strict=True) if im is not None]
        if not keep:
            return [], None, failures + bad
        out = torch.empty((len(keep), 3, ch, cw), dtype=torch.uint8, device=device)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, (_, im) in enumerate(keep):
            by_size.setdefault(tuple(im.shape[1:]), []).append(i)
        for (h, w), rows in by_size.items():  # one resize per distinct image size
            x = torch.stack([keep[i][1] for i in rows]).float()
            nw, nh = resized_size(w, h, side)
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True,
                              align_corners=False)
            top, left = (nh - ch) // 2, (nw - cw) // 2
            out[rows] = x[:, :, top:top + ch, left:left + cw].round().clamp(0, 255).to(torch.uint8)
        return [p for p, _ in keep], normalize(out), failures + bad

    return read


def tensor_reader(bank: torch.Tensor, ids_all: np.ndarray, processor, device: str) -> Callable:
    """Images already decoded and resized (uint8 in RAM): gather into a (pinned) batch buffer,
    copy, normalize on the device."""
    index = {int(i): k % len(bank) for k, i in enumerate(ids_all)}
    normalize = _normalizer(processor, device)

    def read(ids, r: range):
        rows = torch.tensor([index[int(ids[p])] for p in r])
        buf = _pinned((len(r), *bank.shape[1:]), torch.uint8, device)
        torch.index_select(bank, 0, rows, out=buf)
        return list(r), normalize(buf), []

    return read


@torch.inference_mode()
def bare_forward(fm: FoundationModel, pixels: torch.Tensor, n_batches: int, dtype: str,
                 device: str) -> float:
    """Seconds of ``n_batches`` forward passes of ``pixels`` (2 warm-up passes first)."""
    dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    ctx = lambda: torch.autocast(device, dtype=dt, enabled=dt != torch.float32)  # noqa: E731
    for _ in range(2):
        with ctx():
            fm.model.get_image_features(pixel_values=pixels)
    sync(device)
    start = time.perf_counter()
    for _ in range(n_batches):
        with ctx():
            out = fm.model.get_image_features(pixel_values=pixels)
            out.last_hidden_state, out.pooler_output  # noqa: B018 (what extraction keeps)
    sync(device)
    return time.perf_counter() - start

