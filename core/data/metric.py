"""The official VQA accuracy, equal to GT-Vision-Lab's ``vqaEval.py`` to the last digit.

Per question with human answers ``g_1..g_10`` and predicted answer ``r`` (``VQAEval.evaluate``,
GT-Vision-Lab/VQA master, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``):

1. every answer and ``r``: newlines/tabs -> spaces, ``strip()``;
2. **only if the 10 stripped answers are not all identical**: every ``g_i`` *and* ``r`` are
   normalized (:func:`pkd.data.normalize.normalize_answer`). When all 10 agree nothing is
   normalized, so ``"Yes"`` scores 0 against ten ``"yes"`` (official behaviour);
3. leave-one-out: ``acc = 1/10 * sum_i min(1, #{j != i : g_j == r} / 3)``; with ``m`` matches
   among the 10 this is 0, 0.3, 0.6, 0.9 for m = 0..3 and 1 for m >= 4;
4. ``overall = round(100 * sum(acc) / n, 2)``, likewise per answer type and per question type.

The official code removes "the other answers" by dict inequality, i.e. by ``answer_id``; VQA
files give the 10 answers distinct ids, so this is exactly leave-one-out by position.
Differences, all about bad input: the official code asserts that results cover exactly the
annotated questions; here a missing prediction scores 0 and is counted (``missing``), an unknown
or duplicate question id is a :class:`PkdError`.

GQA (:func:`evaluate_gqa`): exact match of the normalized answer (:func:`gqa_accuracy`).

Results file: ``[{"question_id": int, "answer": str}, ...]`` (extra keys are ignored).
Metrics: ``{"overall", "perAnswerType": {type: %}, "perQuestionType": {type: %}, "questions",
"answered", "missing"}`` (percent, 2 decimals).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from pkd.data.normalize import clean_whitespace, normalize_answer, preprocess_answer
from pkd.data.vqa import (
    Annotation,
    Question,
    is_gqa,
    join_split,
    load_questions,
    parse_annotations,
    read_json,
)
from pkd.errors import PkdError
from pkd.fsio import write_json

DECIMALS = 2  # official VQAEval(n=2)


def question_accuracy(gt_answers: Sequence[str], answer: str) -> float:
    """Official accuracy of ``answer`` for one question (steps 1-3 of the module docstring)."""
    gts = [clean_whitespace(g) for g in gt_answers]
    res = clean_whitespace(answer)
    if len(set(gts)) > 1:
        gts = [normalize_answer(g) for g in gts]
        res = normalize_answer(res)
    matches = sum(g == res for g in gts)
    accs = [min(1, float(matches - (g == res)) / 3) for g in gts]  # leave answer i out
    return float(sum(accs)) / len(accs)


def _percent(values: list[float]) -> float:
    return round(100 * float(sum(values)) / len(values), DECIMALS)


def evaluate(questions: Sequence[Question] | None, annotations: Sequence[Annotation],
             results: Mapping[int, str], results_name: str = "results") -> dict:
    """Official VQA metrics of ``results`` ({question_id: answer}) over all ``annotations``.

    ``questions`` (optional) must cover every annotated question; ``results_name`` names the
    results in error messages (usually its file).
    """
    if not annotations:
        raise PkdError(f"{results_name}: no annotated questions to score")
    if questions is not None:
        known = {q.question_id for q in questions}
        lost = [a.question_id for a in annotations if a.question_id not in known]
        if lost:
            raise PkdError(f"questions: annotated question_id {lost[0]} has no question")
    _check_known(annotations, results, results_name)
    return _scored(annotations, results, lambda a, answer: question_accuracy(a.answers, answer))


def load_results(path: str | Path) -> dict[int, str]:
    """``{question_id: answer}`` of an official results file; malformed or duplicate -> PkdError."""
    data = read_json(path)
    if not isinstance(data, list):
        raise PkdError(f"{path}: expected a list of {{question_id, answer}} objects")
    out: dict[int, str] = {}
    first: dict[int, int] = {}
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise PkdError(f"{path}: [{i}]: expected an object, got {type(rec).__name__}")
        qid, answer = rec.get("question_id"), rec.get("answer")
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise PkdError(f"{path}: [{i}].question_id: expected an integer, got {json.dumps(qid)}")
        if not isinstance(answer, str):
            got = json.dumps(answer)[:40]
            raise PkdError(f"{path}: [{i}].answer: expected a string, got {got}")
        if qid in first:
            raise PkdError(f"{path}: [{i}].question_id: duplicate id {qid} "
                           f"(first at [{first[qid]}])")
        first[qid] = i
        out[qid] = answer
    return out


def gqa_accuracy(gold: str, answer: str) -> float:
    """GQA accuracy of one answer: 1.0 for an exact match after normalizing both sides, else 0.

    GQA's ``eval.py`` scores ``predicted == gold`` (``accuracy`` = mean over questions). pkd's
    answer vocabulary holds :func:`pkd.data.normalize.preprocess_answer` keys, so both sides get
    the same ``preprocess_answer(clean_whitespace(.))`` first; GQA's gold answers are lower-case
    words, which it leaves unchanged except articles/number words (``"a"`` dropped, ``"two"`` ->
    ``"2"`` on both sides alike).
    """
    return float(preprocess_answer(clean_whitespace(gold))
                 == preprocess_answer(clean_whitespace(answer)))


def evaluate_gqa(annotations: Sequence[Annotation], results: Mapping[int, str],
                 results_name: str = "results") -> dict:
    """GQA accuracy of ``results`` over ``annotations`` (:func:`pkd.data.vqa.gqa_annotations`):
    the same keys as :func:`evaluate`, ``perAnswerType`` = GQA's structural types (query, verify,
    logical, choose, compare), ``perQuestionType`` = its detailed types; ``metric`` = "gqa"."""
    if not annotations:
        raise PkdError(f"{results_name}: no annotated questions to score")
    _check_known(annotations, results, results_name)
    scored = _scored(annotations, results,
                     lambda a, answer: gqa_accuracy(a.multiple_choice_answer, answer))
    return {"metric": "gqa", **scored}


def _scored(annotations: Sequence[Annotation], results: Mapping[int, str], accuracy) -> dict:
    """Mean ``accuracy(annotation, answer)`` (0 for an unanswered question) in percent: overall,
    per answer type and per question type, with the answered / missing counts."""
    overall: list[float] = []
    per_answer: dict[str, list[float]] = {}
    per_question: dict[str, list[float]] = {}
    for a in annotations:
        answer = results.get(a.question_id)
        acc = 0.0 if answer is None else accuracy(a, answer)
        overall.append(acc)
        per_answer.setdefault(a.answer_type, []).append(acc)
        per_question.setdefault(a.question_type, []).append(acc)
    missing = sum(a.question_id not in results for a in annotations)
    return {"overall": _percent(overall),
            "perAnswerType": {t: _percent(v) for t, v in sorted(per_answer.items())},
            "perQuestionType": {t: _percent(v) for t, v in sorted(per_question.items())},
            "questions": len(annotations), "answered": len(annotations) - missing,
            "missing": missing}


def _check_known(annotations: Sequence[Annotation], results: Mapping[int, str], name: str) -> None:
    annotated = {a.question_id for a in annotations}
    unknown = [qid for qid in results if qid not in annotated]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise PkdError(f"{name}: question_id {unknown[0]}{more} is not in the annotations")


def read_scored(questions_path: str | Path, annotations_path: str | Path,
                results_path: str | Path) -> tuple[list[Annotation], dict[int, str], bool]:
    """(annotations, ``{question_id: answer}``, is GQA) of the three files, checked to fit
    together (a GQA questions file holds the answers itself)."""
    data = read_json(annotations_path)
    if is_gqa(data):
        return parse_annotations(annotations_path, data), load_results(results_path), True
    questions = load_questions(questions_path)
    pairs = join_split(questions_path, questions, annotations_path,
                       parse_annotations(annotations_path, data))
    return [a for _, a in pairs], load_results(results_path), False


def evaluate_files(questions_path: str | Path, annotations_path: str | Path,
                   results_path: str | Path, bootstrap: int = 0, seed: int = 0) -> dict:
    """Read the three files (:func:`read_scored`) and return :func:`evaluate`'s metrics
    (:func:`evaluate_gqa`'s for GQA); ``bootstrap > 0`` adds ``"bootstrap"``: the CIs of
    :func:`bootstrap_metrics` with that many resamples."""
    annotations, results, gqa = read_scored(questions_path, annotations_path, results_path)
    name = str(results_path)
    metrics = (evaluate_gqa(annotations, results, results_name=name) if gqa
               else evaluate(None, annotations, results, results_name=name))
    if bootstrap:
        metrics["bootstrap"] = bootstrap_metrics(annotations, results, bootstrap, seed, gqa=gqa)
    return metrics


def question_scores(annotations: Sequence[Annotation], results: Mapping[int, str],
                    gqa: bool = False) -> list[float]:
    """Each annotated question's accuracy in [0, 1] (:func:`question_accuracy`, or
    :func:`gqa_accuracy`; 0 without a prediction), in annotation order: what ``overall`` is
    ``100 *`` the mean of."""
    out = []
    for a in annotations:
        answer = results.get(a.question_id)
        if answer is None:
            out.append(0.0)
        elif gqa:
            out.append(gqa_accuracy(a.multiple_choice_answer, answer))
        else:
            out.append(question_accuracy(a.answers, answer))
    return out


def bootstrap_metrics(annotations: Sequence[Annotation], results: Mapping[int, str], n: int,
                      seed: int = 0, level: float = 0.95, gqa: bool = False) -> dict:
    """Percentile-bootstrap CIs over questions (:func:`pkd.stats.bootstrap_ci`) of the overall
    accuracy and of each answer type's (resampled within that type), in percent:
    ``{"method", "resamples", "seed", "level", "overall": [low, high],
    "perAnswerType": {type: [low, high]}}``. Test-set sampling noise of one model only; the
    training noise is measured over seeds (:func:`pkd.stats.mean_ci`)."""
    import numpy as np  # numpy: loaded only when --bootstrap asks for CIs

    from pkd.stats import bootstrap_ci  # numpy: loaded only when --bootstrap asks for CIs

    scores = 100.0 * np.asarray(question_scores(annotations, results, gqa))  # (m,) percent
    types = np.array([a.answer_type for a in annotations])  # (m,)

    def ci(x: np.ndarray) -> list[float]:
        e = bootstrap_ci(x, n=n, seed=seed, level=level)
        return [round(e.low, DECIMALS), round(e.high, DECIMALS)]

    return {"method": "percentile bootstrap over questions", "resamples": n, "seed": seed,
            "level": level, "overall": ci(scores),
            "perAnswerType": {t: ci(scores[types == t]) for t in sorted(set(types.tolist()))}}


def write_metrics(metrics: dict, path: str | Path) -> Path:
    """Write metrics as indented JSON, atomically (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, metrics, indent=2)
