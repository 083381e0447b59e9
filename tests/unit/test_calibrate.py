import pytest

from eval.calibrate import fit_abstention, fit_thresholds
from verity.answering.crag import grade

pytestmark = pytest.mark.unit


def test_separable_scores_give_clean_regions() -> None:
    scores = [0.1, 0.2, 0.25, 0.4, 0.5, 0.7, 0.8, 0.9]
    labels = [False, False, False, True, False, True, True, True]
    t = fit_thresholds(scores, labels, target=1.0)
    assert t.upper == 0.7 and t.precision_correct == 1.0
    assert t.lower == 0.4 and t.precision_incorrect == 1.0
    assert [grade(s, upper=t.upper, lower=t.lower) for s in (0.9, 0.5, 0.1)] == [
        "correct", "ambiguous", "incorrect"]


def test_lower_never_exceeds_upper() -> None:
    t = fit_thresholds([0.1, 0.2, 0.3], [True, False, True], target=0.5)
    assert t.lower <= t.upper


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_thresholds([], [])
    with pytest.raises(ValueError):
        fit_thresholds([0.1], [True], target=0)


def test_abstention_threshold_spends_the_false_abstention_budget() -> None:
    answerable = [0.2, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
    unanswerable = [0.1, 0.3, 0.45, 0.52, 0.7]
    t = fit_abstention(answerable + unanswerable, [False] * 10 + [True] * 5, max_false_abstain=0.1)
    assert t.threshold == 0.5  # abstains below 0.5: one answerable question in ten
    assert t.false_abstain == 0.1 and t.abstain_unanswerable == 0.6
    none = fit_abstention(answerable, [False] * 10, max_false_abstain=0.0)
    assert none.threshold == 0.2 and none.false_abstain == 0.0


def test_abstention_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_abstention([0.5], [True])
    with pytest.raises(ValueError):
        fit_abstention([0.5, 0.6], [False])
