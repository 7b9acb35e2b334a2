"""Protocol files: every problem reported at once, each at its file:line:column."""

from __future__ import annotations

import pytest

from evalkit.conditions import Condition, ConditionSyntaxError
from evalkit.protocol_file import ProtocolFileError, parse_protocol
from tests.conftest import REPO

FLAGSHIPS = ["hackney-keyworker", "hackney-estates", "hackney-front-door"]


def keyworker() -> str:
    return (REPO / "protocols" / "hackney-keyworker.yaml").read_text()


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def problems(text: str) -> list:
    with pytest.raises(ProtocolFileError) as exc:
        parse_protocol(text, "p.yaml")
    return exc.value.issues


@pytest.mark.parametrize("name", FLAGSHIPS)
def test_flagship_protocols_are_valid(name):
    p, located = parse_protocol((REPO / "protocols" / f"{name}.yaml").read_text(), name)
    assert p.id == name
    assert sum(o.primary for o in p.outcomes) == 1
    assert located.issues == []


def test_flagship_designs_match_the_brief():
    ind = parse_protocol(keyworker(), "k")[0]
    assert ind.design.method == "blocked" and ind.design.strata == ["benefit"]
    assert len(set(ind.design.block_sizes)) > 1  # random block sizes
    assert {f.name for f in ind.fields} >= {
        "age",
        "benefit",
        "months_unemployed",
        "referral_route",
        "mh_condition",
    }
    assert ind.field("referral_route").levels == ["JCP", "GP", "IAPT", "self", "VCS"]
    assert ind.primary.name == "in_work_13wk" and ind.primary.window.months == 12
    place = parse_protocol((REPO / "protocols/hackney-estates.yaml").read_text(), "e")[0]
    assert place.unit.level == "place" and 12 <= place.sample_size.target_places <= 24
    assert place.design.method in {"stratified_cluster", "matched_pair_cluster"}
    sw = parse_protocol((REPO / "protocols/hackney-front-door.yaml").read_text(), "f")[0]
    assert sw.design.method == "stepped_wedge" and sw.design.periods == 4
    assert sum(sw.design.places_per_step) == 6


def test_typo_duplicate_and_unknown_stratum_are_all_reported_with_positions():
    text = keyworker()
    text = text.replace("  block_sizes: [4, 6]", "  blok_sizes: [4, 6]")
    text = text.replace("  strata: [benefit]", "  strata: [benfit]")
    text = text.replace('version: "1.0"\n', 'version: "1.0"\ntitle: Again\n')
    issues = problems(text)
    by_message = {i.message: i for i in issues}
    typo = next(i for i in issues if "unknown key 'blok_sizes'" in i.message)
    assert (typo.line, typo.column) == (line_of(text, "blok_sizes"), 3)
    assert typo.hint == "did you mean 'block_sizes'?"
    dup = next(i for i in issues if "duplicate key 'title'" in i.message)
    assert (dup.line, dup.column) == (line_of(text, "title: Again"), 1)
    assert f"line {line_of(text, 'title: Area key worker')}" in dup.hint
    stratum = next(i for i in issues if "stratum 'benfit' is not a declared field" in i.message)
    assert stratum.line == line_of(text, "strata: [benfit]")
    assert len(issues) == 3, by_message
    assert str(typo).startswith(f"p.yaml:{typo.line}:3: ")


def test_tab_indentation_is_a_positioned_syntax_error():
    text = keyworker().replace("  se: auto", "\tse: auto")
    [issue] = problems(text)
    assert issue.line == line_of(text, "\tse: auto")
    assert "syntax" in issue.message and "tabs" in issue.hint


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "    ratio: 1\n  - name: keyworker",
            "    ratio: -1\n  - name: keyworker",
            "ratio -1 is not positive",
        ),
        ("    green: 40\n    amber: 30", "    green: 30\n    amber: 40", "thresholds out of order"),
        (
            "    direction: higher_is_better\n    minimal_important_difference: 3",
            "    primary: true\n    direction: higher_is_better\n"
            "    minimal_important_difference: 3",
            "a second primary outcome ('wellbeing')",
        ),
        ("  strata: [benefit]", "  strata: [age]", "stratum 'age' is integer"),
        ("  block_sizes: [4, 6]", "  block_sizes: [4, 5]", "block size 5 is not a positive"),
        (
            "    - rule: benefit in [ESA, JSA, UC]",
            "    - rule: benefit in [ESA, IB]",
            "'IB' is not a level of 'benefit'",
        ),
        (
            "    - rule: months_unemployed >= 24",
            "    - rule: months_unemployed >> 24",
            "cannot read rule",
        ),
        (
            "  covariates: [age, benefit",
            "  covariates: [agee, benefit",
            "covariate 'agee' is not a declared field",
        ),
        ("  multiplicity: holm", "  multiplicity: holmes", "'holmes' is not allowed"),
        (
            "      model: linear_probability",
            "      model: poisson",
            "poisson does not suit a binary outcome",
        ),
    ],
)
def test_cross_field_and_type_errors(old, new, expected):
    text = keyworker()
    assert old in text
    issues = problems(text.replace(old, new, 1))
    assert any(expected in i.message for i in issues), [str(i) for i in issues]


def test_place_design_without_place_field():
    text = (REPO / "protocols" / "hackney-estates.yaml").read_text()
    lines = [x for x in text.splitlines() if not x.startswith("  place_field:")]
    issues = problems("\n".join(lines))
    assert any("a place design has no place field" in i.message for i in issues)


def test_participant_method_on_place_unit_is_refused():
    text = keyworker().replace("  level: participant", "  level: place\n  place_field: age")
    issues = problems(text)
    assert any(
        "'blocked' randomises participants but the unit is place" in i.message for i in issues
    )


def test_non_mapping_and_empty_files():
    assert "empty" in problems("")[0].message
    assert "mapping" in problems("- a\n- b\n")[0].message


@pytest.mark.parametrize(
    ("rule", "value", "holds"),
    [
        ("months_unemployed >= 24", 24, True),
        ("months_unemployed >= 24", 23, False),
        ("age between 18 and 64", 64, True),
        ("age between 18 and 64", 65, False),
        ("benefit in [ESA, JSA, UC]", "UC", True),
        ("benefit not in [ESA, JSA]", "ESA", False),
        ("mh_condition == true", True, True),
        ("mh_condition == true", None, False),
    ],
)
def test_conditions(rule, value, holds):
    assert Condition.parse(rule).holds(value) is holds


@pytest.mark.parametrize(
    "rule", ["age", "age between 64 and 18", "x in ESA", "age between a and b"]
)
def test_unreadable_conditions(rule):
    with pytest.raises(ConditionSyntaxError):
        Condition.parse(rule)


def test_infinite_numbers_are_refused():
    text = keyworker().replace("  alpha: 0.05", "  alpha: .inf")
    issues = problems(text)
    assert any("'.inf' is not a finite number" in i.message for i in issues)


def test_matching_needs_numeric_place_fields_and_costs_name_known_payers():
    text = (REPO / "protocols" / "hackney-estates.yaml").read_text()
    assert "match_on: [imd_score, claimant_rate]" in text
    issues = problems(
        text.replace(
            "match_on: [imd_score, claimant_rate]", "match_on: [imd_score, deprivation_band]"
        )
    )
    assert any("matching variable 'deprivation_band' is category" in i.message for i in issues)
    issues = problems(keyworker().replace("      agency: council", "      agency: Council", 1))
    assert any("'Council' is not allowed" in i.message for i in issues)
