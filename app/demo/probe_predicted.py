"""What PKD's predicted features carry: retrieval and answer probes against the real features.

The predictors ``P_v``, ``P_t`` (stage 1) are meant to give "pre-training-like" features of a
VQA item; the memory and ``L_mkd`` read their unit-norm foundation embeddings ``e_v =
F.embed_image(ṽ)`` and ``e_t = F.embed_text(t̃)`` (``predicted`` stores,
:mod:`pkd.train.predicted_cache`; a split other than the training one is written by ``pkd
extract predicted --split``). Two questions, per split:

1. **Image-likeness** (retrieval, ITC cosine of the frozen foundation model): is ``e_v`` closest
   to the real embedding ``e_I`` of *its own* image among the split's images, and is ``e_t`` —
   as a caption would be? ``R@1 = 100 · mean_q [argmax_i cos(e_q^*, e_I(i)) = image(q)]``, chance
   ``100 / #images``; the real question embedding ``e_Q`` (a question is not a caption) is the
   reference.
2. **Answer probes**: per question family (question type), a multinomial logistic regression
   (:func:`pkd.demo.probe.fit_probe`, standardised inputs) from each source to the answer,
   fitted on the training split, scored (exact answer, % of questions) on each split; answers the
   training split never gives for that family count as misses (question types the training
   split lacks are not scored). Sources: ``predicted pair``
   ``[e_v; e_t]`` (what the memory rows hold), ``foundation pair`` ``[e_I; e_Q]`` (the real
   foundation embeddings of the item: what the predictors stand in for) and ``prior`` (the
   family's most frequent training answer). A predicted pair that matches the foundation pair
   in distribution but falls to the prior out of distribution has learnt the training answer
   prior, not the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pkd.data.normalize import normalize_answer
from pkd.data.vqa import dataset_files, load_split
from pkd.demo.probe import fit_probe
from pkd.errors import PkdError
from pkd.stores import FeatureStore

SOURCES = ("predicted pair", "foundation pair", "prior")


def _labels(data_root: Path, dataset: str, split: str) -> dict[int, tuple[int, str, str]]:
    """``{question_id: (image_id, question_type, multiple_choice_answer)}`` of a split."""
    questions, annotations = dataset_files(data_root, dataset, split)
    if annotations is None:
        raise PkdError(f"{questions}: split {split!r} has no annotations to probe against")
    return {q.question_id: (q.image_id, a.question_type,
                            normalize_answer(a.multiple_choice_answer))
            for q, a in load_split(questions, annotations)}


def _rows(store: FeatureStore, ids: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    got = store.read(store.rows_of(ids), names)
    return {k: v.astype(np.float32) for k, v in got.items()}


def split_features(predicted: Path, images: Path, questions: Path, labels: dict
                   ) -> dict[str, np.ndarray | list]:
    """Features of the questions in ``predicted`` that every store holds: ``e_v``, ``e_t``,
    ``e_I``, ``e_Q`` (n, d_e), ``image`` (n,) ids, ``type`` and ``answer`` lists."""
    pred = FeatureStore.open(predicted, kind="predicted")
    img = FeatureStore.open(images, kind="foundation_image")
    txt = FeatureStore.open(questions, kind="foundation_text")
    qids = pred.ids[pred.ok]
    qids = qids[np.isin(qids, txt.ids[txt.ok]) & np.isin(qids, list(labels))]
    image_ids = np.array([labels[q][0] for q in qids.tolist()], dtype=np.int64)
    keep = np.isin(image_ids, img.ids[img.ok])
    qids, image_ids = qids[keep], image_ids[keep]
    if not len(qids):
        raise PkdError(f"{predicted}: no question of it has foundation features in {images} "
                       f"and {questions}")
    p = _rows(pred, qids, ["predicted_image_embed", "predicted_text_embed"])
    return {"e_v": p["predicted_image_embed"], "e_t": p["predicted_text_embed"],
            "e_I": _rows(img, image_ids, ["image_embeds"])["image_embeds"],
            "e_Q": _rows(txt, qids, ["text_embeds"])["text_embeds"], "image": image_ids,
            "type": [labels[q][1] for q in qids.tolist()],
            "answer": [labels[q][2] for q in qids.tolist()]}


def own_image_recall(queries: np.ndarray, image_embeds: np.ndarray, image_ids: np.ndarray,
                     k: int = 1) -> float:
    """R@k (%): share of queries whose own image is among the ``k`` distinct images of highest
    cosine (module doc); ``image_embeds`` (n, d) is row-aligned with the queries."""
    unique, first = np.unique(image_ids, return_index=True)
    gallery = torch.nn.functional.normalize(torch.from_numpy(image_embeds[first]), dim=-1)
    q = torch.nn.functional.normalize(torch.from_numpy(queries), dim=-1)
    own = torch.from_numpy(np.searchsorted(unique, image_ids))  # (n,) gallery index
    k = min(k, len(unique))
    top = torch.cat([(q[i:i + 4096] @ gallery.T).topk(k, dim=1).indices
                     for i in range(0, len(q), 4096)])  # (n, k)
    return 100.0 * (top == own[:, None]).any(1).float().mean().item()


def _pair(f: dict, source: str) -> np.ndarray:
    keys = ("e_v", "e_t") if source == "predicted pair" else ("e_I", "e_Q")
    return np.concatenate([f[k] for k in keys], axis=1)


def answer_probes(train: dict, evals: dict[str, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """``{split: {source: {"all": %, question type: %}}}`` (module doc, point 2)."""
    hits = {s: {src: {} for src in SOURCES} for s in evals}
    train_types = np.asarray(train["type"])
    eval_types = {split: np.asarray(f["type"]) for split, f in evals.items()}  # once per split
    for qtype in sorted(set(train["type"])):
        rows = np.flatnonzero(train_types == qtype)
        answers = sorted({train["answer"][i] for i in rows})
        index = {a: k for k, a in enumerate(answers)}
        y = np.array([index[train["answer"][i]] for i in rows])
        favourite = answers[int(np.bincount(y).argmax())]
        for source in SOURCES[:2]:
            x = _pair(train, source)[rows]
            mean, std = x.mean(0), x.std(0) + 1e-6
            probe = fit_probe((x - mean) / std, y, len(answers))
            for split, f in evals.items():
                mine = np.flatnonzero(eval_types[split] == qtype)
                with torch.no_grad():
                    xe = torch.from_numpy((_pair(f, source)[mine] - mean) / std)
                    guess = probe(xe).argmax(1).numpy() if len(mine) else np.zeros(0, int)
                hits[split][source][qtype] = [answers[g] == f["answer"][i]
                                              for g, i in zip(guess.tolist(), mine.tolist(),
                                                              strict=True)]
        for split, f in evals.items():
            hits[split]["prior"][qtype] = [f["answer"][i] == favourite
                                           for i in np.flatnonzero(eval_types[split] == qtype)]
    out = {}
    for split, by_source in hits.items():
        out[split] = {}
        for source, by_type in by_source.items():
            scored = {t: h for t, h in by_type.items() if h}
            every = [x for h in scored.values() for x in h]
            out[split][source] = {"all": 100.0 * float(np.mean(every)) if every else None,
                                  **{t: 100.0 * float(np.mean(h)) for t, h in scored.items()}}
    return out


QUERIES = {"predicted image e_v": "e_v", "predicted text e_t": "e_t", "question e_Q": "e_Q"}


def probe_predicted(train: dict, evals: dict[str, dict]) -> dict:
    """``{"retrieval": {split: {query: {"r1", "r5"}, "chance_r1", "chance_r5", "images"}},
    "probes": answer_probes(...)}`` of features from :func:`split_features`."""
    retrieval = {}
    for split, f in evals.items():
        images = len(np.unique(f["image"]))
        retrieval[split] = {name: {f"r{k}": own_image_recall(f[key], f["e_I"], f["image"], k)
                                   for k in (1, 5)} for name, key in QUERIES.items()}
        retrieval[split].update(chance_r1=100.0 / images, chance_r5=100.0 * min(5, images) / images,
                                images=images)
    return {"retrieval": retrieval, "probes": answer_probes(train, evals)}


def probe_run(cfg, splits: tuple[str, ...]) -> dict:
    """:func:`probe_predicted` of a stage-2 PKD config: its training split's predicted store
    (``data.predicted``) fits the probes; each of ``splits`` is predicted by the same frozen
    predictors into ``<data.predicted stem>-<split>.zarr`` beside it (``pkd extract predicted
    --split``; kept, reused when complete) and scored, with the foundation stores of the config."""
    from pkd.train.predicted_extract import split_predictions  # safetensors.torch: only to probe

    data = cfg.data
    if not data.predicted or not data.foundation_image or not data.foundation_text:
        raise PkdError("probe predicted: give a pkd (stage 2) config with data.predicted and "
                       "both foundation stores (data.foundation_image, data.foundation_text)")
    root, train_store = Path(data.root), Path(data.predicted)
    if not train_store.exists():
        raise PkdError(f"{train_store}: no predicted store (run pkd extract predicted first)")

    def features(store: Path, split: str) -> dict:
        return split_features(store, Path(data.foundation_image), Path(data.foundation_text),
                              _labels(root, data.dataset, split))

    evals = {}
    for split in splits:
        store = split_predictions(cfg, split)
        evals[split] = features(store, split)
    return probe_predicted(features(train_store, data.train_split), evals)
