"""Everything a data draw's runs read, made once: the benchmark, the foundation model, the
region backbones and every store (resumable, under the draw's lock)."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from pkd.cores import usable_cores
from pkd.demo.config import ALIGNMENT, SPLITS, DemoConfig, draw_config
from pkd.demo.jobs import locked, threads_per_job
from pkd.demo.vlm import VLM_ROWS, prepare_vlm
from pkd.errors import PkdError


@dataclass
class Paths:
    data: Path
    foundation: Path
    stores: Path

    def store(self, name: str) -> Path:
        return self.stores / name


def _stage(label: str) -> None:
    print(f"[demo] {label}", flush=True)


def prepare(cfg: DemoConfig) -> Paths:
    """Data, foundation model, backbones and every store the methods read (each step once)."""
    from pkd.data.synth import SYNTH_VERSION, generate  # PIL: loaded only when a draw is prepared
    from pkd.train.pretrain import (  # torch: loaded only when a draw is prepared
        PretrainConfig,
        pretrain,
    )
    from pkd.train.pretrain.regions import (  # torch: loaded only when a draw is prepared
        RegionPretrainConfig,
        pretrain_regions,
    )

    out = cfg.out
    paths = Paths(out / "data", out / "foundation", out / "stores")
    meta = paths.data / "synth_meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("version") != SYNTH_VERSION:
        raise PkdError(f"{paths.data}: a benchmark of another version (this pkd writes version "
                       f"{SYNTH_VERSION}); give a fresh --out folder")
    if meta.is_file():
        check_same_benchmark(json.loads(meta.read_text()).get("config", {}), cfg, paths.data)
    else:
        _stage("generating the synthetic benchmark")
        generate(cfg.synth, paths.data)
    if not (paths.foundation / "pretrain_metrics.json").is_file():
        _stage("pre-training the demo foundation model on the caption corpus")
        pretrain(PretrainConfig(data_dir=paths.data, out_dir=paths.foundation,
                                epochs=cfg.pretrain_epochs, tag_epochs=cfg.pretrain_tag_epochs,
                                lock_vision=cfg.pretrain_tag_epochs > 0, seed=cfg.synth.seed))
    for size, epochs, seed in (("student", 0, 0), ("teacher", 2, 1)):  # trained like bottom-up's
        if not (out / f"backbone-{size}" / "config.json").is_file():
            _stage(f"training the {size} region backbone on the detection corpus")
            pretrain_regions(RegionPretrainConfig(
                data_dir=paths.data, out_dir=out / f"backbone-{size}", size=size, epochs=epochs,
                seed=seed + 2 * cfg.synth.seed))  # draw 0: seeds 0, 1
    extract(cfg, paths)
    if any(m in VLM_ROWS for m in cfg.methods):
        _stage("extracting the caption images' regions; pre-training F0 (tiny LXMERT) on captions")
        prepare_vlm(paths.data, out, paths.stores, cfg.synth.max_objects, cfg.vlm_pretrain_epochs,
                    cfg.synth.seed, threads_per_job(cfg.jobs) if cfg.jobs > 1 else 0)
    return paths


def check_same_benchmark(saved: dict, cfg: DemoConfig, where: Path) -> None:
    """Refuse a data folder generated with another :class:`SynthConfig` (e.g. the quick size
    when ``--preset full`` is asked), naming the first field that differs. A field the saved
    config lacks was added later within the same ``SYNTH_VERSION``, whose default reproduces
    the earlier output: it counts as its default."""
    from pkd.data.synth import SynthConfig  # PIL: loaded only when a draw is checked

    wanted = json.loads(json.dumps(asdict(cfg.synth)))  # tuples -> lists, as in the file
    defaults = json.loads(json.dumps(asdict(SynthConfig())))
    for key, value in wanted.items():
        got = saved.get(key, defaults[key])
        if got != value:
            raise PkdError(f"{where}: generated with {key}={got!r}, this demo "
                           f"({cfg.preset}) needs {value!r}; give another --out folder")


def machine() -> dict:
    """The CPU model and usable cores the timings were measured on (timings differ ~3x
    between machines of one kind)."""
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": usable_cores()}


def extract(cfg: DemoConfig, paths: Paths) -> None:
    from pkd.pipeline.extract import (  # zarr: loaded only when features are extracted
        FoundationRecipe,
        RegionRecipe,
        extract_foundation,
        extract_regions,
    )
    from pkd.pipeline.runner import RunOptions  # zarr: loaded only when features are extracted
    from pkd.pipeline.sources import SourceConfig  # PIL: loaded only when features are extracted

    source = SourceConfig(root=paths.data, splits=("train", "val", *SPLITS))
    opts = RunOptions(items_per_shard=256)
    _stage("extracting foundation features (images, questions)")
    extract_foundation(FoundationRecipe(source, str(paths.foundation)), paths.stores, opts)
    _stage("extracting student regions (given boxes) and aligned teacher regions (same boxes)")
    student = RegionRecipe(source, detector=f"given:{paths.data / 'boxes.json'}",
                           backbone=str(cfg.out / "backbone-student"),
                           max_boxes=cfg.synth.max_objects)
    extract_regions(student, paths.store("regions.zarr"), opts)
    teacher = RegionRecipe(source, boxes_from=str(paths.store("regions.zarr")),
                           backbone=str(cfg.out / "backbone-teacher"))
    extract_regions(teacher, paths.store("teacher_regions.zarr"), opts)
    if any(m in ALIGNMENT for m in cfg.methods):  # the teacher's own detector (simulated)
        _stage("extracting teacher regions on the teacher's own simulated detector's boxes")
        own = RegionRecipe(source, detector=f"simulated:teacher:{paths.data / 'boxes.json'}",
                           backbone=str(cfg.out / "backbone-teacher"),
                           max_boxes=cfg.synth.max_objects + 2)
        extract_regions(own, paths.store(OWN_REGIONS), opts)


OWN_REGIONS = "teacher_own_regions.zarr"  # teacher features on its own detector's boxes




def prepare_draw(cfg: DemoConfig, draw: int, jobs: int = 1) -> Paths:
    """:func:`prepare` of one data draw (:func:`draw_config`), under its lock; with ``jobs``
    draws prepared side by side, in a worker with its share of the cores."""
    dcfg = draw_config(cfg, draw)
    if jobs > 1:
        import torch  # torch: loaded only when a draw is prepared

        torch.set_num_threads(threads_per_job(jobs))
    with locked(dcfg.out, "prepare"):
        return prepare(dcfg)


def draw_facts(paths: Paths) -> dict:
    """What one draw's inputs are: region probes, foundation probes, its answer priors and the
    blind-rule table of its benchmark (``synth_meta.json``, :mod:`pkd.data.blind_rules`)."""
    meta = json.loads((paths.data / "synth_meta.json").read_text())
    return {"region_probes": region_probes(paths), "foundation_probes": foundation_probes(paths),
            "blind_rules": meta["priors"]["blind_rules"], "answer_priors": meta["answer_priors"]}





def region_probes(paths: Paths) -> dict:
    """Linear-probe accuracy of shape and colour from each regions store (train -> test images):
    what the VQA models can see at all (:mod:`pkd.demo.probe`)."""
    from pkd.demo.probe import probe_benchmark_store  # torch: loaded only when the probes run

    return {name: probe_benchmark_store(paths.store(f"{name}.zarr"), paths.data)
            for name in ("regions", "teacher_regions")}


def foundation_probes(paths: Paths) -> dict:
    """Zero-shot probes (colour, shape, size) and retrieval of the demo foundation model on
    its held-out caption images, as measured by pre-training (``pretrain_metrics.json``)."""
    metrics = json.loads((paths.foundation / "pretrain_metrics.json").read_text())
    return {"probes": {k: v["accuracy"] for k, v in metrics.get("probes", {}).items()},
            "retrieval": metrics.get("retrieval", {})}

