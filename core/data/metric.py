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

Results file: ``[{"question_id": int, "answer": str}, ...]`` (extra keys are ignored).
Metrics: ``{"overall", "perAnswerType": {type: %}, "perQuestionType": {type: %}, "questions",
"answered", "missing"}`` (percent, 2 decimals).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from pkd.data.normalize import clean_whitespace, normalize_answer
from pkd.data.vqa import Annotation, Question, load_split, read_json
from pkd.errors import PkdError

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
    annotated = {a.question_id for a in annotations}
    unknown = [qid for qid in results if qid not in annotated]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise PkdError(f"{results_name}: question_id {unknown[0]}{more} is not in the annotations")
    overall: list[float] = []
    per_answer: dict[str, list[float]] = {}
    per_question: dict[str, list[float]] = {}
    for a in annotations:
        answer = results.get(a.question_id)
        acc = 0.0 if answer is None else question_accuracy(a.answers, answer)
        overall.append(acc)
        per_answer.setdefault(a.answer_type, []).append(acc)
        per_question.setdefault(a.question_type, []).append(acc)
    missing = sum(a.question_id not in results for a in annotations)
    return {
        "overall": _percent(overall),
        "perAnswerType": {t: _percent(v) for t, v in sorted(per_answer.items())},
        "perQuestionType": {t: _percent(v) for t, v in sorted(per_question.items())},
        "questions": len(annotations),
        "answered": len(annotations) - missing,
        "missing": missing,
    }


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


def evaluate_files(questions_path: str | Path, annotations_path: str | Path,
                   results_path: str | Path) -> dict:
    """Read the three files, check they fit together, and return :func:`evaluate`'s metrics."""
    pairs = load_split(questions_path, annotations_path)
    annotations = [a for _, a in pairs if a is not None]
    return evaluate(None, annotations, load_results(results_path), results_name=str(results_path))


def write_metrics(metrics: dict, path: str | Path) -> Path:
    """Write metrics as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path
