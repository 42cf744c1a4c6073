"""The shared argument checks of ``canvas_engineering.validation``: what passes, what fails, and the message."""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from canvas_engineering.errors import (
    CanvasError,
    CanvasValidationError,
    FieldValidationError,
    LayoutValidationError,
    RegionValidationError,
)
from canvas_engineering.validation import (
    IDENTIFIER,
    check_bool,
    check_choice,
    check_finite_float,
    check_int,
    check_name,
    check_non_negative_int,
    check_positive_int,
    is_finite_number,
    is_int,
    positive_finite_numbers,
)

not_ints = st.one_of(
    st.booleans(), st.floats(), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=2)
)


# -- predicates ------------------------------------------------------------------------------


@given(st.integers())
def test_is_int_accepts_every_int(value: int) -> None:
    assert is_int(value)


@given(not_ints)
def test_is_int_refuses_bools_and_non_ints(value: object) -> None:
    assert not is_int(value)


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_is_finite_number_accepts_finite_numbers(value: float) -> None:
    assert is_finite_number(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, False, "1", None])
def test_is_finite_number_refuses(value: object) -> None:
    assert not is_finite_number(value)


# -- integers -------------------------------------------------------------------------------


@given(st.integers(), st.integers(), st.integers())
def test_check_int_accepts_exactly_the_bounded_ints(value: int, a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    if lo <= value <= hi:
        assert check_int(value, "x", minimum=lo, maximum=hi) == value
    else:
        with pytest.raises(CanvasValidationError, match=rf"^x={value} must be an integer in \[{lo}, {hi}\]$"):
            check_int(value, "x", minimum=lo, maximum=hi)


@given(not_ints)
def test_check_int_refuses_non_ints_naming_the_field(value: object) -> None:
    with pytest.raises(CanvasValidationError, match=rf"^n={re.escape(repr(value))} must be an integer$"):
        check_int(value, "n")


def test_check_int_one_bound_reads_as_a_comparison() -> None:
    with pytest.raises(CanvasValidationError, match=r"^k=5 must be an integer <= 4$"):
        check_int(5, "k", maximum=4)
    with pytest.raises(CanvasValidationError, match=r"^k=-1 must be an integer >= 0$"):
        check_int(-1, "k", minimum=0)


def test_check_int_rule_and_sep_shape_the_message() -> None:
    with pytest.raises(LayoutValidationError, match=r"^t_current=9 must be an integer in \[0, T=4\]$"):
        check_int(9, "t_current", error=LayoutValidationError, minimum=0, maximum=4, rule="an integer in [0, T=4]")
    with pytest.raises(RegionValidationError, match=r"^period 0 must be an integer >= 1$"):
        check_positive_int(0, "period", error=RegionValidationError, sep=" ")


@given(st.integers(min_value=1))
def test_check_positive_int_accepts_positive(value: int) -> None:
    assert check_positive_int(value, "n") == value


@given(st.one_of(st.integers(max_value=0), st.just(True)))
def test_check_positive_int_refuses_zero_negatives_and_true(value: int) -> None:
    with pytest.raises(CanvasValidationError, match=r"must be an integer >= 1"):
        check_positive_int(value, "n")


@given(st.integers(min_value=0))
def test_check_non_negative_int_accepts(value: int) -> None:
    assert check_non_negative_int(value, "n") == value


@given(st.one_of(st.integers(max_value=-1), st.just(False)))
def test_check_non_negative_int_refuses(value: int) -> None:
    with pytest.raises(CanvasValidationError, match=r"must be an integer >= 0"):
        check_non_negative_int(value, "n")


# -- floats ---------------------------------------------------------------------------------


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_check_finite_float_returns_a_float(value: float) -> None:
    out = check_finite_float(value, "x")
    assert isinstance(out, float)
    assert out == float(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "0.5", None])
def test_check_finite_float_refuses_non_finite_and_non_numbers(value: object) -> None:
    with pytest.raises(CanvasValidationError, match=rf"^x={re.escape(repr(value))} must be a finite number$"):
        check_finite_float(value, "x")


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-2, max_value=2))
def test_check_finite_float_bounds_open_and_closed(value: float) -> None:
    inside = 0 < value < 1
    if inside:
        assert check_finite_float(value, "p", minimum=0, maximum=1, open_min=True, open_max=True) == value
    else:
        with pytest.raises(CanvasValidationError, match=r"must be a finite number in \(0, 1\)$"):
            check_finite_float(value, "p", minimum=0, maximum=1, open_min=True, open_max=True)


def test_check_finite_float_closed_bounds_include_the_ends() -> None:
    assert check_finite_float(0, "w", minimum=0) == 0.0
    assert check_finite_float(1.0, "w", minimum=0, maximum=1) == 1.0
    with pytest.raises(CanvasValidationError, match=r"^w=0 must be a finite number > 0$"):
        check_finite_float(0, "w", minimum=0, open_min=True)
    with pytest.raises(CanvasValidationError, match=r"^w=1 must be a finite number < 1$"):
        check_finite_float(1, "w", maximum=1, open_max=True)
    with pytest.raises(CanvasValidationError, match=r"^w=-0\.5 must be a finite number >= 0$"):
        check_finite_float(-0.5, "w", minimum=0)


# -- bools, names, choices ------------------------------------------------------------------


@given(st.booleans())
def test_check_bool_accepts_bools(value: bool) -> None:
    assert check_bool(value, "flag") is value


@pytest.mark.parametrize("value", [0, 1, "yes", None, 1.0])
def test_check_bool_refuses_look_alikes(value: object) -> None:
    with pytest.raises(CanvasValidationError, match=rf"^flag={re.escape(repr(value))} must be a bool$"):
        check_bool(value, "flag")


@given(st.text(min_size=1))
def test_check_name_accepts_non_empty_strings(value: str) -> None:
    assert check_name(value, "name") == value


@pytest.mark.parametrize("value", ["", None, 3, b"x"])
def test_check_name_refuses_empty_and_non_strings(value: object) -> None:
    with pytest.raises(CanvasValidationError, match=r"must be a non-empty string$"):
        check_name(value, "name")


@given(st.from_regex(IDENTIFIER, fullmatch=True))
def test_check_name_identifier_pattern_accepts_identifiers(value: str) -> None:
    assert check_name(value, "name", pattern=IDENTIFIER) == value


@pytest.mark.parametrize("value", ["1abc", "a-b", "a b", "a.b"])
def test_check_name_identifier_pattern_refuses(value: str) -> None:
    with pytest.raises(CanvasValidationError, match=r"must be a name matching"):
        check_name(value, "name", pattern=IDENTIFIER)


def test_check_choice_accepts_members_and_lists_options() -> None:
    assert check_choice("b", "mode", ("a", "b")) == "b"
    assert check_choice(None, "family", ("a", None)) is None
    with pytest.raises(CanvasValidationError, match=r"^mode='c' must be one of 'a', 'b'$"):
        check_choice("c", "mode", ("a", "b"))


def test_check_choice_does_not_confuse_bools_and_ints() -> None:
    with pytest.raises(CanvasValidationError, match=r"must be one of 0, 1"):
        check_choice(True, "bit", (0, 1))
    assert check_choice(True, "flag", (True, False)) is True


def test_check_choice_refuses_values_with_elementwise_equality() -> None:
    with pytest.raises(CanvasValidationError, match=r"must be one of 'a'"):
        check_choice(torch.zeros(3), "mode", ("a",))


# -- error classes --------------------------------------------------------------------------


def test_helpers_raise_the_given_class_which_is_a_project_value_error() -> None:
    with pytest.raises(RegionValidationError) as info:
        check_positive_int(0, "h", error=RegionValidationError)
    assert isinstance(info.value, CanvasError)
    assert isinstance(info.value, ValueError)


def test_helpers_accept_an_error_factory() -> None:
    error = functools.partial(FieldValidationError, path="arm.joints")
    with pytest.raises(FieldValidationError) as info:
        check_positive_int(0, "field 'arm.joints': h", error=error)
    assert info.value.path == "arm.joints"
    assert str(info.value) == "field 'arm.joints': h=0 must be an integer >= 1"


def test_positive_finite_numbers_refuses_wrong_length_non_numbers_and_non_finite() -> None:
    assert positive_finite_numbers([1, 2.5], 2) == [1.0, 2.5]
    assert positive_finite_numbers((0.5,), 1) == [0.5]
    for bad in ([1.0], [1.0, 0.0], [1.0, -2.0], [1.0, math.inf], [math.nan, 1.0], ["a", 1.0], None, 3):
        assert positive_finite_numbers(bad, 2) is None
