"""The label taxonomy: defaults, validation of a record's labels, configuration."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.protocol.problems import HashfedError, Problem
from federation.protocol.taxonomy import DEFAULT_LABELS, DEFAULT_TAXONOMY, Taxonomy

REQUIRED_LABELS = {
    "imminent_credible_threat",
    "graphic_violence_against_defenceless",
    "glorification",
    "recruitment",
    "instruction",
    "incident",
}


def test_default_labels_cover_the_design() -> None:
    assert set(DEFAULT_LABELS) >= REQUIRED_LABELS
    for name, description in DEFAULT_LABELS.items():
        assert description, name
        assert "\n" not in description


def test_default_taxonomy_uses_the_default_labels() -> None:
    assert dict(DEFAULT_TAXONOMY.labels) == dict(DEFAULT_LABELS)


def test_validate_sorts_and_deduplicates() -> None:
    labels = ["recruitment", "glorification", "recruitment", "incident"]
    assert DEFAULT_TAXONOMY.validate(labels) == ("glorification", "incident", "recruitment")
    assert DEFAULT_TAXONOMY.validate(("instruction",)) == ("instruction",)


def test_validate_refuses_empty() -> None:
    with pytest.raises(HashfedError) as caught:
        DEFAULT_TAXONOMY.validate([])
    assert caught.value.problem is Problem.MALFORMED_REQUEST
    assert "at least one label is required" in caught.value.detail
    assert "glorification" in caught.value.detail


def test_validate_refuses_unknown_naming_it() -> None:
    with pytest.raises(HashfedError) as caught:
        DEFAULT_TAXONOMY.validate(["glorification", "Glorification", "spam"])
    error = caught.value
    assert error.problem is Problem.UNKNOWN_LABEL
    assert error.detail.startswith("unknown labels 'Glorification', 'spam'; known labels: ")
    for label in REQUIRED_LABELS:
        assert label in error.detail


def test_validate_refuses_one_unknown_in_the_singular() -> None:
    with pytest.raises(HashfedError, match=r"^unknown label 'spam'; known labels: glorif"):
        DEFAULT_TAXONOMY.validate(["spam"])


def test_validate_cuts_a_long_unknown_label_in_the_message() -> None:
    with pytest.raises(HashfedError) as caught:
        DEFAULT_TAXONOMY.validate(["x" * 10_000])
    assert caught.value.problem is Problem.UNKNOWN_LABEL
    assert len(caught.value.detail) < 500
    with pytest.raises(HashfedError) as caught:
        DEFAULT_TAXONOMY.validate([f"label_{n:05}" for n in range(10_000)])
    assert "'label_00009' and 9990 more; known labels" in caught.value.detail


def test_validate_refuses_a_single_string() -> None:
    with pytest.raises(HashfedError) as caught:
        DEFAULT_TAXONOMY.validate("glorification")
    assert caught.value.problem is Problem.MALFORMED_REQUEST
    assert "must be a list of label names" in caught.value.detail


def test_validate_refuses_non_string_labels() -> None:
    with pytest.raises(HashfedError) as caught:
        DEFAULT_TAXONOMY.validate(["glorification", 3])  # type: ignore[list-item]
    assert caught.value.problem is Problem.MALFORMED_REQUEST
    assert "each label must be a string, got int" in caught.value.detail


def test_custom_taxonomy() -> None:
    taxonomy = Taxonomy({"b_label": "second", "a_label": "first"})
    assert list(taxonomy.labels) == ["a_label", "b_label"]
    assert taxonomy.validate(["b_label", "a_label"]) == ("a_label", "b_label")
    with pytest.raises(HashfedError) as caught:
        taxonomy.validate(["glorification"])
    assert caught.value.problem is Problem.UNKNOWN_LABEL
    assert caught.value.detail.endswith("known labels: a_label, b_label")


def test_taxonomy_is_immutable_and_isolated_from_its_source() -> None:
    source = {"a_label": "first"}
    taxonomy = Taxonomy(source)
    source["b_label"] = "added later"
    assert "b_label" not in taxonomy.labels
    with pytest.raises(TypeError):
        taxonomy.labels["c_label"] = "x"  # type: ignore[index]


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"": "empty"},
        {"Upper": "x"},
        {"with space": "x"},
        {"trailing_": "x"},
        {"double__underscore": "x"},
        {"1leading_digit": "x"},
        {"a" * 65: "too long"},
    ],
)
def test_taxonomy_refuses_bad_configuration(labels: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Taxonomy(labels)


@given(st.lists(st.sampled_from(sorted(DEFAULT_LABELS)), min_size=1))
def test_validate_is_sorted_set_of_known_labels(labels: list[str]) -> None:
    validated = DEFAULT_TAXONOMY.validate(labels)
    assert validated == tuple(sorted(set(labels)))
    assert DEFAULT_TAXONOMY.validate(validated) == validated
