"""Secret names, placeholders and header templates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hutch.egress_policy import (
    PolicyError,
    check_secret_name,
    find_placeholders,
    parse_header_template,
    placeholder,
    replace_placeholders,
)
from hutch.egress_policy.placeholders import fits_in_header


def test_placeholders_are_found_as_written_and_percent_encoded() -> None:
    text = "token=hutch-secret://GITHUB_TOKEN&b=hutch-secret%3A%2F%2Fother.key"

    assert find_placeholders(text) == {"GITHUB_TOKEN", "other.key"}


def test_replacing_swaps_only_the_names_given() -> None:
    text = "Bearer hutch-secret://A and hutch-secret://B"

    assert replace_placeholders(text, {"A": "va"}) == "Bearer va and hutch-secret://B"


def test_values_put_in_a_url_are_percent_encoded() -> None:
    assert replace_placeholders("/x?k=hutch-secret://K", {"K": "a b/&c"}, url=True) == "/x?k=a%20b%2F%26c"


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,20}", fullmatch=True), st.text(min_size=1, max_size=30))
def test_a_placeholder_round_trips(name: str, value: str) -> None:
    text = f"prefix {placeholder(name)} suffix"

    assert find_placeholders(text) == {name}
    assert replace_placeholders(text, {name: value}) == f"prefix {value} suffix"


@pytest.mark.parametrize("name", ["", "1abc", "a b", "a/b", "x" * 129, "ä"])
def test_bad_secret_names_are_refused(name: str) -> None:
    with pytest.raises(PolicyError, match="secret name"):
        check_secret_name(name)


def test_a_header_template_renders_the_value() -> None:
    template = parse_header_template("Authorization: Bearer {value}")

    assert template.name == "Authorization"
    assert template.render("abc") == "Bearer abc"
    assert str(template) == "Authorization: Bearer {value}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Authorization Bearer {value}", "must look like"),
        ("Authorization: Bearer", "must contain {value}"),
        ("Bad Header: {value}", "must look like"),
        ("Host: {value}", "cannot carry a secret"),
    ],
)
def test_bad_header_templates_are_refused(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=None) as caught:
        parse_header_template(text)
    assert message in str(caught.value)


def test_values_with_line_breaks_do_not_fit_in_a_header() -> None:
    assert fits_in_header("abc")
    assert not fits_in_header("a\r\nX-Evil: 1")
