"""Was this store made from these inputs? Checks a consumer runs before reading a store against
a data folder (``pkd stores probe --data``): the boxes file's sha256 recorded by a ``given:`` /
``simulated:`` extraction, and the per-shard content digests of the images
(:mod:`pkd.data.inputs_digest`). A store that does not record one is not checked on it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pkd.data.images import ImageIndex
from pkd.data.inputs_digest import images_digest
from pkd.errors import StoreMismatch
from pkd.stores.reader import FeatureStore
from pkd.stores.records import read_records


def check_boxes(store: FeatureStore, boxes_json: Path) -> None:
    """StoreMismatch (one line naming both) when the store records ``boxes_sha256`` and
    ``boxes_json`` has other bytes."""
    want = store.spec.producer.get("boxes_sha256")
    if not want:
        return
    have = hashlib.sha256(Path(boxes_json).read_bytes()).hexdigest()
    if have != want:
        raise StoreMismatch(f"{store.path}: made from a boxes file with sha256 {want[:12]}…, but "
                            f"{boxes_json} has {have[:12]}… (another data set's boxes?)")


def check_images(store: FeatureStore, folder: Path) -> None:
    """StoreMismatch (one line naming both) when a shard's recorded content digest differs
    from the images of its ids in ``folder`` (failed items excluded, as when recorded)."""
    index = ImageIndex.scan(folder)
    for k, record in sorted(read_records(store.path).items()):
        want = record.get("inputs", {}).get("sha256")
        if want is None:
            continue
        failed = {int(f["id"]) for f in record["failures"]}
        rows = range(*record["rows"])
        ids = [int(i) for i in store.ids[rows.start:rows.stop] if int(i) not in failed]
        if images_digest(((i, index.get(i)) for i in ids), True) != want:
            raise StoreMismatch(f"{store.path}: shard {k} was made from other images than "
                                f"those in {folder} (same ids, other content: another data set?)")
