"""Agreement statistics against values worked out by hand."""
import math

import pytest

from rayrlhf.data.agreement import (
    cohen_kappa,
    fleiss_kappa,
    kappa_undefined_reason,
    majority,
    percent_agreement,
)


def _from_table(yy: int, yn: int, ny: int, nn: int) -> tuple[list[str], list[str]]:
    """Two annotators' labels from a 2x2 table (rows: annotator A, columns: annotator B)."""
    a = ["y"] * (yy + yn) + ["n"] * (ny + nn)
    b = ["y"] * yy + ["n"] * yn + ["y"] * ny + ["n"] * nn
    return a, b


def test_cohen_kappa_of_a_2x2_table():
    #              B yes  B no
    #     A yes      20     5     A says yes on 25/50 = 0.5
    #     A no       10    15     B says yes on 30/50 = 0.6
    # p_o = (20 + 15) / 50 = 0.7
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a, b = _from_table(20, 5, 10, 15)
    assert percent_agreement(a, b) == pytest.approx(0.7)
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(b, a) == pytest.approx(0.4)


def test_cohen_kappa_perfect_chance_and_below_chance():
    assert cohen_kappa(["x", "y", "x"], ["x", "y", "x"]) == pytest.approx(1.0)
    # Table [[1, 1], [1, 1]]: p_o = 0.5, p_e = 0.5 * 0.5 + 0.5 * 0.5 = 0.5, kappa = 0.
    assert cohen_kappa(*_from_table(1, 1, 1, 1)) == pytest.approx(0.0)
    # Always opposite: p_o = 0, p_e = 0.5, kappa = (0 - 0.5) / 0.5 = -1.
    assert cohen_kappa(["x", "y"], ["y", "x"]) == pytest.approx(-1.0)


def test_three_categories():
    # a: x x y z, b: x y y z. p_o = 3/4.
    # a shares x 1/2, y 1/4, z 1/4; b shares x 1/4, y 1/2, z 1/4.
    # p_e = 1/2 * 1/4 + 1/4 * 1/2 + 1/4 * 1/4 = 5/16; kappa = (3/4 - 5/16) / (11/16) = 7/11.
    assert cohen_kappa(list("xxyz"), list("xyyz")) == pytest.approx(7 / 11)


def test_fleiss_kappa_three_raters():
    # item 1: a a a -> P_1 = (9 - 3) / (3 * 2) = 1
    # item 2: a a b -> P_2 = (4 + 1 - 3) / 6 = 1/3
    # item 3: b b b -> P_3 = 1
    # P_bar = 7/9; p_a = 5/9, p_b = 4/9; P_e = 25/81 + 16/81 = 41/81
    # kappa = (63/81 - 41/81) / (40/81) = 22/40 = 0.55
    assert fleiss_kappa([["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"]]) == pytest.approx(0.55)


def test_fleiss_kappa_of_two_raters_is_scotts_pi():
    # The 2x2 table above: P_bar = p_o = 0.7; pooled yes share (25 + 30) / 100 = 0.55,
    # P_e = 0.55^2 + 0.45^2 = 0.505; kappa = (0.7 - 0.505) / 0.495 = 13/33 (Scott's pi).
    a, b = _from_table(20, 5, 10, 15)
    assert fleiss_kappa(list(zip(a, b))) == pytest.approx(13 / 33)


def test_one_label_everywhere_is_undefined_not_a_crash():
    same = ["first"] * 5
    assert percent_agreement(same, same) == 1.0
    assert math.isnan(cohen_kappa(same, same))
    assert math.isnan(fleiss_kappa([["first"] * 3] * 4))
    assert kappa_undefined_reason(same + same).startswith("undefined: every label is 'first'")
    assert kappa_undefined_reason(["a", "b"]) == ""
    assert math.isnan(cohen_kappa([], [])) and math.isnan(fleiss_kappa([])) and math.isnan(percent_agreement([], []))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="same length, found 2 and 1"):
        cohen_kappa(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="item 1 has 2 labels, item 0 has 3"):
        fleiss_kappa([["a", "a", "b"], ["a", "b"]])
    with pytest.raises(ValueError, match="at least 2 labels"):
        fleiss_kappa([["a"]])


def test_majority():
    assert majority(["a", "b", "a"]) == "a"
    assert majority(["a", "b"]) is None
    assert majority([]) is None
