"""The official VQA metric: hand-computed quirks, and the fast path against a vendored reference."""

from __future__ import annotations

import json
import random
import re

import pytest

from pkd.data import normalize
from pkd.data.metric import evaluate, evaluate_files, load_results, question_accuracy
from pkd.data.vqa import Annotation, Question
from pkd.errors import PkdError

# ---------------------------------------------------------------------------------------------
# Slow reference: GT-Vision-Lab/VQA master, PythonEvaluationTools/vqaEvaluation/vqaEval.py,
# VQAEval.evaluate / processPunctuation / processDigitArticle / setAccuracy, copied with only the
# progress printing and the per-question bookkeeping removed. Lists copied from its __init__.
# ---------------------------------------------------------------------------------------------
REF_CONTRACTIONS = {"aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've"}  # fmt: skip
REF_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                  "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
REF_ARTICLES = ["a", "an", "the"]
REF_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
REF_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
REF_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
             ">", "<", "@", "`", ",", "?", "!"]


def ref_process_punctuation(inText):
    outText = inText
    for p in REF_PUNCT:
        if (p + " " in inText or " " + p in inText) or (re.search(REF_COMMA_STRIP, inText) != None):  # noqa: E711
            outText = outText.replace(p, "")
        else:
            outText = outText.replace(p, " ")
    outText = REF_PERIOD_STRIP.sub("", outText, re.UNICODE)
    return outText


def ref_process_digit_article(inText):
    outText = []
    tempText = inText.lower().split()
    for word in tempText:
        word = REF_MANUAL_MAP.setdefault(word, word)
        if word not in REF_ARTICLES:
            outText.append(word)
    for wordId, word in enumerate(outText):
        if word in REF_CONTRACTIONS:
            outText[wordId] = REF_CONTRACTIONS[word]
    return " ".join(outText)


def ref_evaluate(anns: list[dict], res: dict[int, dict], n: int = 2) -> dict:
    """``anns``: official annotation dicts (mutated in place like the original); ``res``: qa."""
    gts = {a["question_id"]: a for a in anns}
    quesIds = [a["question_id"] for a in anns]
    accQA, accQuesType, accAnsType = [], {}, {}
    for quesId in quesIds:
        for ansDic in gts[quesId]["answers"]:
            ansDic["answer"] = ansDic["answer"].replace("\n", " ")
            ansDic["answer"] = ansDic["answer"].replace("\t", " ")
            ansDic["answer"] = ansDic["answer"].strip()
        resAns = res[quesId]["answer"]
        resAns = resAns.replace("\n", " ")
        resAns = resAns.replace("\t", " ")
        resAns = resAns.strip()
        gtAcc = []
        gtAnswers = [ans["answer"] for ans in gts[quesId]["answers"]]
        if len(set(gtAnswers)) > 1:
            for ansDic in gts[quesId]["answers"]:
                ansDic["answer"] = ref_process_punctuation(ansDic["answer"])
                ansDic["answer"] = ref_process_digit_article(ansDic["answer"])
            resAns = ref_process_punctuation(resAns)
            resAns = ref_process_digit_article(resAns)
        for gtAnsDatum in gts[quesId]["answers"]:
            otherGTAns = [item for item in gts[quesId]["answers"] if item != gtAnsDatum]
            matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
            acc = min(1, float(len(matchingAns)) / 3)
            gtAcc.append(acc)
        quesType = gts[quesId]["question_type"]
        ansType = gts[quesId]["answer_type"]
        avgGTAcc = float(sum(gtAcc)) / len(gtAcc)
        accQA.append(avgGTAcc)
        accQuesType.setdefault(quesType, []).append(avgGTAcc)
        accAnsType.setdefault(ansType, []).append(avgGTAcc)
    return {
        "overall": round(100 * float(sum(accQA)) / len(accQA), n),
        "perQuestionType": {t: round(100 * float(sum(v)) / len(v), n)
                            for t, v in accQuesType.items()},
        "perAnswerType": {t: round(100 * float(sum(v)) / len(v), n) for t, v in accAnsType.items()},
    }


# ---------------------------------------------------------------------------------------------
def _ann(qid: int, answers: list[str], qtype: str = "what", atype: str = "other") -> Annotation:
    return Annotation(qid, qid * 10, qtype, atype, answers[0], tuple(answers))


def _official(ann: Annotation) -> dict:
    return {"question_id": ann.question_id, "image_id": ann.image_id,
            "question_type": ann.question_type, "answer_type": ann.answer_type,
            "multiple_choice_answer": ann.multiple_choice_answer,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                        for j, a in enumerate(ann.answers)]}


def test_constants_equal_the_official_lists():
    assert normalize.CONTRACTIONS == REF_CONTRACTIONS
    assert normalize.NUMBER_WORDS == REF_MANUAL_MAP
    assert list(normalize.ARTICLES) == REF_ARTICLES
    assert list(normalize.PUNCTUATION) == REF_PUNCT
    assert normalize.PERIOD_STRIP.pattern == REF_PERIOD_STRIP.pattern
    assert normalize.COMMA_STRIP.pattern == REF_COMMA_STRIP.pattern


# leave-one-out by hand, m = number of the 10 answers equal to the prediction:
#   the m matching annotators, left out, see m-1 matches; the 10-m others see m matches;
#   acc = (m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10
@pytest.mark.parametrize(("m", "by_hand", "decimal"), [
    (0, 0.0, 0.0),
    (1, (1 * 0 + 9 * (1 / 3)) / 10, 0.3),
    (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10, 0.6),
    (3, (3 * (2 / 3) + 7 * 1) / 10, 0.9),
    (4, (4 * 1 + 6 * 1) / 10, 1.0),
    (10, 1.0, 1.0),
])
def test_leave_one_out(m, by_hand, decimal):
    answers = ["cat"] * m + ["dog"] * (10 - m)
    assert by_hand == pytest.approx(decimal, abs=1e-12)
    assert question_accuracy(answers, "cat") == pytest.approx(decimal, abs=1e-12)
    assert question_accuracy(answers[::-1], "cat") == pytest.approx(decimal, abs=1e-12)


def test_no_normalization_when_all_ten_answers_agree():
    # ten identical answers: neither they nor the prediction are normalized (only stripped)
    assert question_accuracy(["yes"] * 10, "Yes") == 0.0
    assert question_accuracy(["yes"] * 10, "yes.") == 0.0
    assert question_accuracy(["Yes"] * 10, "yes") == 0.0
    assert question_accuracy(["yes"] * 10, "  yes\n") == 1.0  # stripping always happens
    # one differing answer switches normalization on for all of them and for the prediction:
    # 9 x "yes" match -> 1.0
    assert question_accuracy(["yes"] * 9 + ["no"], "Yes.") == 1.0
    assert question_accuracy(["Yes"] * 9 + ["no"], "yes") == 1.0


def test_answers_identical_only_after_stripping_count_as_identical():
    # " yes" and "yes" are the same after strip -> set has one element -> no normalization
    assert question_accuracy(["yes"] * 5 + [" yes"] * 5, "YES") == 0.0
    assert question_accuracy(["yes"] * 5 + [" yes"] * 5, "yes") == 1.0


def test_gt_answers_are_normalized_when_they_differ():
    # "two" -> "2" in the ground truth and in the prediction: 3 matches -> 0.9
    assert question_accuracy(["two"] * 3 + ["3"] * 7, "2") == pytest.approx(0.9)
    assert question_accuracy(["Two"] * 3 + ["3"] * 7, "two") == pytest.approx(0.9)
    # articles and contractions: "the dog" == "dog", "dont" == "don't"
    assert question_accuracy(["the dog"] * 2 + ["cat"] * 8, "a dog") == pytest.approx(0.6)
    assert question_accuracy(["dont"] + ["no"] * 9, "don't") == pytest.approx(0.3)


def test_punctuation_quirks_inside_the_metric():
    gts = ["t-shirt"] * 3 + ["shirt"] * 7
    assert question_accuracy(gts, "t shirt") == pytest.approx(0.9)  # "-" -> " "
    assert question_accuracy(gts, "tshirt") == 0.0
    gts = ["1,000 t-shirts"] * 4 + ["many"] * 6  # commaStrip: "1000 tshirts"
    assert question_accuracy(gts, "1000 tshirts") == 1.0
    assert question_accuracy(gts, "1000 t shirts") == 0.0
    gts = ["3.5"] * 4 + ["yes."] * 6  # "3.5" kept, "yes." -> "yes"
    assert question_accuracy(gts, "3.5") == 1.0
    assert question_accuracy(gts, "35") == 0.0
    assert question_accuracy(gts, "yes") == 1.0


def test_overall_and_per_type_rounding():
    anns = [_ann(1, ["yes"] * 10, "is the", "yes/no"),
            _ann(2, ["2"] + ["3"] * 9, "how many", "number"),
            _ann(3, ["red"] * 10, "what color", "other")]
    results = {1: "yes", 2: "2", 3: "blue"}
    m = evaluate(None, anns, results)
    assert m["overall"] == 43.33  # 100 * (1 + 0.3 + 0) / 3 = 43.333...
    assert m["perAnswerType"] == {"number": 30.0, "other": 0.0, "yes/no": 100.0}
    assert m["perQuestionType"] == {"how many": 30.0, "is the": 100.0, "what color": 0.0}
    assert (m["questions"], m["answered"], m["missing"]) == (3, 3, 0)


def test_missing_predictions_score_zero_and_are_counted():
    anns = [_ann(1, ["yes"] * 10), _ann(2, ["no"] * 10)]
    m = evaluate(None, anns, {1: "yes"})
    assert m["overall"] == 50.0
    assert (m["answered"], m["missing"]) == (1, 1)


def test_unknown_result_id_is_an_error():
    with pytest.raises(PkdError, match=r"^r\.json: question_id 99 \(and 1 more\) is not in"):
        evaluate(None, [_ann(1, ["yes"] * 10)], {99: "yes", 98: "no"}, results_name="r.json")


def test_questions_must_cover_annotations():
    with pytest.raises(PkdError, match="annotated question_id 2 has no question"):
        evaluate([Question(1, 10, "q?")], [_ann(1, ["a"] * 10), _ann(2, ["b"] * 10)], {})


def test_load_results(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"question_id": 1, "answer": "yes", "score": 0.9},
                                {"question_id": 2, "answer": ""}]))
    assert load_results(path) == {1: "yes", 2: ""}


@pytest.mark.parametrize(("content", "message"), [
    ('{"question_id": 1}', "expected a list"),
    ("[1]", r"\[0\]: expected an object"),
    ('[{"question_id": "1", "answer": "a"}]', r"\[0\]\.question_id: expected an integer"),
    ('[{"question_id": true, "answer": "a"}]', r"\[0\]\.question_id: expected an integer"),
    ('[{"question_id": 1, "answer": 3}]', r"\[0\]\.answer: expected a string"),
    ('[{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}]',
     r"\[1\]\.question_id: duplicate id 1 \(first at \[0\]\)"),
    ("[{", "not valid JSON"),
])
def test_load_results_errors(tmp_path, content, message):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(PkdError, match=message) as err:
        load_results(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_end_to_end_files(tmp_path):
    anns = [_ann(1, ["yes"] * 9 + ["no"], "is the", "yes/no"),
            _ann(2, ["two"] * 2 + ["3"] * 8, "how many", "number")]
    (tmp_path / "q.json").write_text(json.dumps({"questions": [
        {"question_id": a.question_id, "image_id": a.image_id, "question": "?"} for a in anns]}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [_official(a) for a in anns]}))
    (tmp_path / "r.json").write_text(json.dumps([{"question_id": 1, "answer": "Yes"},
                                                 {"question_id": 2, "answer": "2"}]))
    m = evaluate_files(tmp_path / "q.json", tmp_path / "a.json", tmp_path / "r.json")
    # q1: 9 matches -> 1.0; q2: "two" -> "2", 2 matches -> 0.6; overall 80
    assert m["overall"] == 80.0
    assert m["perAnswerType"] == {"number": 60.0, "yes/no": 100.0}


# ---------------------------------------------------------------------------------------------
POOL = ["yes", "Yes", "yes.", " yes ", "no", "No!", "2", "two", "Two", "3", "3.5", "35",
        "1,000", "1000", "t-shirt", "t shirt", "t - shirt", "tshirt", "the dog", "a dog", "dog",
        "Dog.", "dont", "don't", "red, blue", "red,blue", "red blue", "(left)", "left", "none",
        "0", "zero", "yes\n", "hot dog?", "1,5 t-shirts", "an apple", "apple", "it's", "its",
        "5.", "5", "...", ""]


def _random_case(rng: random.Random, qid: int) -> tuple[Annotation, str]:
    if rng.random() < 0.3:
        answers = [rng.choice(POOL)] * 10
    else:
        few = rng.sample(POOL, rng.randint(2, 4))
        answers = [rng.choice(few) for _ in range(10)]
    ann = _ann(qid, answers, rng.choice(["what", "how many", "is the"]),
               rng.choice(["other", "number", "yes/no"]))
    return ann, rng.choice(POOL + answers)


def test_fast_path_equals_official_reference_on_random_inputs():
    rng = random.Random(1234)
    for trial in range(20):
        cases = [_random_case(rng, qid) for qid in range(1, rng.randint(2, 60))]
        anns = [a for a, _ in cases]
        results = {a.question_id: r for a, r in cases}
        for a, r in cases:
            ref = ref_evaluate([_official(a)], {a.question_id: {"answer": r}})["overall"]
            assert round(100 * question_accuracy(a.answers, r), 2) == ref, (a.answers, r)
        ours = evaluate(None, anns, results)
        ref = ref_evaluate([_official(a) for a in anns],
                           {q: {"answer": r} for q, r in results.items()})
        assert ours["overall"] == ref["overall"], trial
        assert ours["perAnswerType"] == ref["perAnswerType"]
        assert ours["perQuestionType"] == ref["perQuestionType"]

