"""The foundation image stage decodes one stream across shard boundaries (run_many): the same
arrays and failures as shard by shard, and the next shard's images decoded while this one
computes."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from pkd.pipeline.events import recording, span
from pkd.pipeline.stages import FoundationImageStage


class FakeSource:
    def __init__(self, folder, ids, missing=()):
        self.folder, self.image_ids, self.missing = folder, list(ids), set(missing)

    def image_path(self, image_id):
        return None if image_id in self.missing else self.folder / f"{image_id}.png"


class FakeModel:
    """Pixels = mean colour per image; forward sleeps a little and tags the rows."""

    dims = {"vision_tokens": 2, "vision_dim": 3, "embed_dim": 4}
    decode_size = None

    def __init__(self):
        self.calls = 0

    def preprocess(self, images):
        return np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) for im in images])

    def encode_pixels(self, pixels):
        with span("forward", self.calls):
            self.calls += 1
            time.sleep(0.02)
            return {"vision_tokens": np.repeat(pixels[:, None, :], 2, axis=1).astype(np.float16),
                    "image_embeds": np.tile(pixels.sum(1, keepdims=True), (1, 4)).astype(
                        np.float32)}


def test_run_many_equals_shard_by_shard_and_decodes_ahead(tmp_path):
    ids = list(range(1, 15))
    for i in ids:
        Image.new("RGB", (8, 6), (i * 10, 255 - i * 10, i)).save(tmp_path / f"{i}.png")
    (tmp_path / "7.png").write_bytes(b"not an image")  # a failure inside shard 1
    source = FakeSource(tmp_path, ids, missing={12})
    shards = [ids[0:5], ids[5:10], [], ids[10:14]]  # an empty shard too
    stage = FoundationImageStage(FakeModel(), source, batch_size=2, producer={"m": "fake"},
                                 workers=2)
    alone = [stage.run(s) for s in shards]
    with recording() as log:
        streamed = list(stage.run_many(shards))
    assert len(streamed) == len(shards)
    for (a, fa), (b, fb) in zip(alone, streamed, strict=True):
        assert a.keys() == b.keys() and [f.id for f in fa] == [f.id for f in fb]
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert [f.id for f in streamed[1][1]] == [7] and [f.id for f in streamed[3][1]] == [12]
    assert streamed[2][0]["vision_tokens"].shape == (0, 2, 3)
    # shard 1's first batch (positions 0-1) was decoded before shard 0's last forward ended
    decodes = sorted((e for e in log if e.kind == "decode"), key=lambda e: e.start)
    forwards = sorted((e for e in log if e.kind == "forward"), key=lambda e: e.start)
    last_of_shard0 = forwards[2]  # shard 0: batches of 2, 2, 1 images
    assert sum(d.start < last_of_shard0.stop for d in decodes) >= 4


def test_the_content_digest_takes_the_bytes_hashed_while_decoding(tmp_path):
    from pkd.data.inputs_digest import images_digest
    from pkd.pipeline.stages import kept_ids

    ids = list(range(1, 7))
    for i in ids:
        Image.new("RGB", (5, 4), (i, 2 * i, 3 * i)).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"broken")
    stage = FoundationImageStage(FakeModel(), FakeSource(tmp_path, ids), batch_size=2,
                                 producer={"m": "fake"})
    (_, failures), = list(stage.run_many([ids]))
    assert set(stage._hashed) == {1, 2, 4, 5, 6}  # each file read once, while decoded
    kept = kept_ids(ids, {f.id for f in failures})
    want = images_digest([(i, tmp_path / f"{i}.png") for i in kept], True)  # files read again
    assert stage.inputs(kept, True) == want and not stage._hashed  # taken, not kept
    assert stage.inputs(kept, False) == images_digest(
        [(i, tmp_path / f"{i}.png") for i in kept], False)
