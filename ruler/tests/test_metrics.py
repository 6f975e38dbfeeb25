import pytest

from ruler.metrics import needle_recall, string_match_all, string_match_part

REFS = [["1234567", "7654321"]]


@pytest.mark.parametrize(
    "prediction,all_score,part_score",
    [
        ("1234567 and 7654321", 1.0, 1.0),  # exact
        ("only 1234567", 0.5, 1.0),  # partial
        ("7654321, 1234567", 1.0, 1.0),  # order does not matter
        ("The numbers are: 1234567 ... and also 7654321. Hope that helps!", 1.0, 1.0),  # extra text
        ("", 0.0, 0.0),  # empty
        ("none of them", 0.0, 0.0),
    ],
)
def test_string_match(prediction, all_score, part_score):
    assert string_match_all([prediction], REFS) == all_score
    assert string_match_part([prediction], REFS) == part_score


def test_case_and_control_characters():
    refs = [["ab12-CD34"]]
    assert string_match_all(["value: AB12-cd34"], refs) == 1.0
    assert needle_recall("\x00\x07 ab12-cd34\x1f", ["AB12-CD34"]) == [True]


def test_averages_over_samples_and_rejects_bad_shapes():
    assert string_match_all(["1234567", "nothing"], [["1234567"], ["42"]]) == 0.5
    with pytest.raises(ValueError):
        string_match_all(["a"], [["a"], ["b"]])
    with pytest.raises(TypeError):
        string_match_all(["a"], ["a"])
