"""``pkd stores``: inspect feature stores and import existing HDF5 / TSV features."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pkd.errors import PkdError
from pkd.fsio import write_json

app = typer.Typer(help="Feature stores: info, probe, probe-predicted, import-h5, import-tsv.",
                  no_args_is_help=True)
MAX_LISTED = 20  # failed images printed by import-h5 (`pkd stores info` lists them all)


@app.command("info")
def info(
    store: Annotated[Path, typer.Argument(help="A store folder (NAME.zarr).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Schema, counts, provenance and completeness of a store."""
    from pkd.stores import store_info  # zarr: loaded only when the command runs

    summary = store_info(store)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_summary(summary)


@app.command("probe")
def probe(
    store: Annotated[Path, typer.Argument(help="A regions store of the synthetic benchmark.")],
    data: Annotated[Path, typer.Option(help="The benchmark folder (pkd data synth).")],
    train_split: Annotated[str, typer.Option(help="Split whose images fit the probe.")] = "train",
    eval_split: Annotated[str, typer.Option(help="Split whose images score it.")] = "test",
) -> None:
    """Linear probes: how well an object's shape and colour can be read from its region feature."""
    from pkd.demo.probe import probe_benchmark_store  # torch: loaded only when the command runs

    result = probe_benchmark_store(store, data, train_split, eval_split)
    for attr, r in result.items():
        typer.echo(f"{attr}: {r['accuracy']:.1f}% on {r['regions']} {eval_split} regions "
                   f"(chance {r['chance']:.1f}%, majority class {r['majority']:.1f}%)")


@app.command("probe-predicted")
def probe_predicted(
    config: Annotated[Path, typer.Argument(help="A stage-2 pkd config (RUN/config.yaml).")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="dotted key=value overrides")] = None,
    splits: Annotated[str, typer.Option(
        help="Comma-separated splits to score.")] = "test,test_comp,test_iid",
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the result here.")] = None,
) -> None:
    """What PKD's predicted features carry: own-image retrieval and answer probes per question
    family, against the real foundation embeddings and the training prior."""
    from pkd.demo.probe_predicted import probe_run  # torch: loaded only when the command runs
    from pkd.train.config_load import load_config  # torch: loaded only when the command runs

    names = tuple(s.strip() for s in splits.split(",") if s.strip())
    result = probe_run(load_config(config, overrides or []), names)
    if json_out is not None:
        write_json(json_out, result, indent=2)
    for split, r in result["retrieval"].items():
        typer.echo(f"{split}: own image R@1 / R@5 among {r['images']} images (chance "
                   f"{r['chance_r1']:.2f} / {r['chance_r5']:.2f}%): " + "; ".join(
                       f"{name} {v['r1']:.2f} / {v['r5']:.2f}" for name, v in r.items()
                       if isinstance(v, dict)))
    for split, by_source in result["probes"].items():
        for source, acc in by_source.items():
            cells = ", ".join(f"{t} {v:.1f}" for t, v in acc.items() if t != "all")
            overall = "n/a" if acc["all"] is None else f"{acc['all']:.1f}%"
            typer.echo(f"{split}: answer probe {source}: {overall} ({cells})")


@app.command("import-h5")
def import_h5(
    h5: Annotated[Path, typer.Argument(
        help="Bottom-up-attention HDF5 file (fixed-36 or pos_boxes layout).")],
    out: Annotated[Path, typer.Argument(help="The regions store to write (NAME.zarr).")],
    # `\\[` keeps rich markup from eating "[image_id, ...]" (it would read it as a style tag)
    ids_json: Annotated[Path | None, typer.Option(
        help="JSON {image_id: row} or \\[image_id, ...].")] = None,
    imgid2idx: Annotated[Path | None, typer.Option(
        help="Classic *_imgid2idx.pkl (read safely: plain ints only; numpy keys need "
             "--ids-json).")] = None,
    items_per_shard: Annotated[int, typer.Option(help="Images per shard (work unit).")] = 512,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing store at OUT first.")] = False,
    strict: Annotated[bool, typer.Option(
        help="Exit 1 when any image failed (non-finite features).")] = False,
) -> None:
    """Convert HDF5 region features into a `regions` store (resumable). Images whose features are
    not finite in float16 (NaN / inf, or beyond ±65504) are recorded as failed, their rows zero."""
    from pkd.stores import FeatureStore  # zarr: loaded only when the command runs
    from pkd.stores import import_h5 as run_import  # zarr: loaded only when the command runs

    if ids_json and imgid2idx:
        raise PkdError(f"{out}: give at most one of --ids-json and --imgid2idx")
    path = run_import(h5, out, ids=ids_json, imgid2idx=imgid2idx, items_per_shard=items_per_shard,
                      overwrite=overwrite)
    failures = FeatureStore.open(path).failures
    typer.echo(f"wrote {path}: {len(failures)} failed")
    for f in failures[:MAX_LISTED]:
        typer.echo(f"failed image {f.id}: {f.reason}", err=True)
    if len(failures) > MAX_LISTED:
        typer.echo(f"{len(failures) - MAX_LISTED} more failed, see `pkd stores info {path}`",
                   err=True)
    if strict and failures:
        raise typer.Exit(1)


@app.command("import-tsv")
def import_tsv(
    tsv: Annotated[Path, typer.Argument(
        help="LXMERT *_obj36.tsv / py-bottom-up-attention / bottom-up TSV, "
             "or VinVL features.tsv.")],
    out: Annotated[Path, typer.Argument(help="The regions store to write (NAME.zarr).")],
    predictions: Annotated[Path | None, typer.Option(
        help="VinVL predictions.tsv (boxes, sizes) of features.tsv.")] = None,
    labelmap: Annotated[Path | None, typer.Option(
        help="VinVL VG-SGG-dicts-*.json (label_to_idx): also store region_labels.")] = None,
    items_per_shard: Annotated[int, typer.Option(help="Images per shard (work unit).")] = 512,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing store at OUT first.")] = False,
    strict: Annotated[bool, typer.Option(
        help="Exit 1 when any line failed or was skipped.")] = False,
) -> None:
    """Convert TSV region features into a `regions` store, streaming and resumable. Lines that do
    not decode, or whose image size / boxes are impossible, are recorded with their line number
    (failed images, or skipped lines). Resuming from a changed TSV (another sha256) is refused."""
    from pkd.stores import FeatureStore  # zarr: loaded only when the command runs
    from pkd.stores.tsvimport import import_tsv as run_import  # zarr: only when the command runs

    path, skipped = run_import(tsv, out, predictions=predictions, labelmap=labelmap,
                               items_per_shard=items_per_shard, overwrite=overwrite)
    failures = FeatureStore.open(path).failures
    typer.echo(f"wrote {path}: {len(failures)} failed, {len(skipped)} lines skipped")
    for f in failures[:MAX_LISTED]:
        typer.echo(f"failed image {f.id}: {f.reason}", err=True)
    for s in skipped[:MAX_LISTED]:
        typer.echo(f"skipped line {s['line']}: {s['reason']}", err=True)
    if len(failures) + len(skipped) > 2 * MAX_LISTED:
        typer.echo(f"more in `pkd stores info {path}` and {path}/_pkd/tsv_skipped.json", err=True)
    if strict and (failures or skipped):
        raise typer.Exit(1)


def _checksum_line(s: dict) -> str:
    if s["chunk_checksums"]:
        return "chunk checksums: crc32c on every chunk (a damaged chunk is a read error)"
    missing = s["arrays_without_checksums"]
    which = "no chunk checksums" if len(missing) == len(s["arrays"]) + 2 else \
        f"no chunk checksums on {', '.join(missing)}"
    return (f"{which} (written before pkd checksummed chunks): a damaged chunk may read as "
            "wrong numbers; rebuild the store (--overwrite) to add them")


def _print_summary(s: dict) -> None:
    """A rich table of :func:`pkd.stores.store_info`'s summary."""
    from rich.console import Console  # rich: loaded only when a table prints
    from rich.markup import escape  # rich: loaded only when a table prints
    from rich.table import Table  # rich: loaded only when a table prints

    console = Console(soft_wrap=True)  # long paths and JSON stay on one line
    state = ("complete" if s["complete"]
             else f"INCOMPLETE, pending shards {s['pending_shards'][:10]}")
    console.print(f"[bold]{escape(s['path'])}[/bold]  {s['kind']} store keyed by {s['key']}: "
                  f"{s['n_items']} items, {s['n_ok']} ok, {s['n_failures']} failed; "
                  f"{s['done_shards']}/{s['n_shards']} shards done ({state}); "
                  f"{s['bytes_on_disk'] / 2**20:.1f} MiB")
    table = Table("array", "item shape", "dtype")
    for a in s["arrays"]:
        table.add_row(a["name"], str(tuple(a["item_shape"])), a["dtype"])
    console.print(table)
    console.print(f"producer: {json.dumps(s['producer'])}", markup=False)
    console.print(f"dims: {json.dumps(s['dims'])}", markup=False)
    console.print(f"chunks of {s['items_per_chunk']} items, shards of {s['items_per_shard']}; "
                  f"created {s['created']} by pkd {s['pkd_version']}")
    console.print(_checksum_line(s), markup=False)
    for f in s["failures"]:
        console.print(f"failed {f['id']}: {f['path']} {f['reason']}", markup=False)
