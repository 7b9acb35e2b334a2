"""The protocol: everything a pilot commits to before the first referral is randomised.

The model is strict on purpose. Unknown keys are errors (a typo such as ``blok_sizes``
must not silently fall back to a default), and every free-form part of a plan is a small
typed piece. Checks that need more than one field at a time live in
:func:`consistency_problems`, which returns every problem with its path so that
``evalkit validate`` can point at the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evalkit.conditions import Condition, ConditionSyntaxError

SLUG = r"^[a-z0-9][a-z0-9-]{1,62}[a-z0-9]$"
NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

Agency = Literal["DWP", "council", "NHS", "provider", "survey"]
Payer = Literal["DWP", "council", "NHS", "HMRC", "provider"]
SeType = Literal["auto", "hc2", "hc1", "cr2", "cr1"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


# --- identity -------------------------------------------------------------------------


class Owner(Strict):
    name: str = Field(description="Person accountable for the pilot.")
    organisation: str
    email: str | None = None


# --- fields and population -----------------------------------------------------------


class BaselineField(Strict):
    """A value recorded about a unit before it is randomised."""

    name: str = Field(pattern=NAME)
    type: Literal["integer", "number", "boolean", "category", "date"]
    label: str
    required: bool = True
    identifier: bool = Field(
        False, description="Personal identifier: pseudonymised before it is stored, never shown."
    )
    levels: list[str] | None = Field(None, description="Allowed values of a category field.")
    min: float | None = None
    max: float | None = None


class EligibilityRule(Strict):
    rule: str = Field(description="e.g. 'months_unemployed >= 24' or 'age between 18 and 64'.")
    reason: str = Field(description="Plain words recorded when someone is excluded by this rule.")

    @field_validator("rule")
    @classmethod
    def _parses(cls, v: str) -> str:
        try:
            Condition.parse(v)
        except ConditionSyntaxError as exc:
            raise ValueError(str(exc)) from None
        return v

    @cached_property
    def condition(self) -> Condition:
        return Condition.parse(self.rule)


class Population(Strict):
    description: str
    eligibility: list[EligibilityRule] = Field(default_factory=list)


class Individuals(Strict):
    """The people nested in each randomised place, on whom outcomes are measured."""

    description: str
    expected_per_place: int | None = Field(
        None, gt=0, description="People per place (per place and period in a stepped wedge)."
    )


class Unit(Strict):
    level: Literal["participant", "place"]
    place_field: str | None = Field(
        None, pattern=NAME, description="Field naming each person's place (estate, practice)."
    )
    place_label: str | None = Field(None, description="What a place is, e.g. 'council estate'.")
    place_fields: list[BaselineField] = Field(
        default_factory=list, description="Place-level covariates carried in the places file."
    )
    individuals: Individuals | None = None


# --- arms and design -----------------------------------------------------------------


class Arm(Strict):
    name: str = Field(pattern=NAME)
    label: str
    description: str
    ratio: float = Field(1.0, description="Allocation ratio; must be positive.")


class MinimisationFactor(Strict):
    field: str = Field(pattern=NAME)
    weight: float = 1.0


class SimpleDesign(Strict):
    method: Literal["simple"]


class CompleteDesign(Strict):
    method: Literal["complete"]


class BlockedDesign(Strict):
    method: Literal["blocked"]
    strata: list[str] = Field(default_factory=list)
    block_sizes: list[int] = Field(description="Drawn at random for each new block.")


class ClusterDesign(Strict):
    method: Literal["cluster"]


class StratifiedClusterDesign(Strict):
    method: Literal["stratified_cluster"]
    strata: list[str]


class MatchedPairClusterDesign(Strict):
    method: Literal["matched_pair_cluster"]
    match_on: list[str] = Field(description="Place fields used to form pairs of similar places.")


class ConstrainedClusterDesign(Strict):
    method: Literal["constrained_cluster"]
    balance_on: list[str]
    criterion: Literal["l2", "max_abs_smd"] = "l2"
    keep_fraction: float = Field(0.1, description="Share of best-balanced allocations kept.")
    candidates: int = Field(10000, description="Allocations scored when not all are enumerated.")


class MinimisationDesign(Strict):
    method: Literal["minimisation"]
    factors: list[MinimisationFactor]
    probability: float = Field(0.8, description="Chance of the arm that minimises imbalance.")


class SteppedWedgeDesign(Strict):
    method: Literal["stepped_wedge"]
    periods: int
    period_months: int = Field(3, gt=0)
    places_per_step: list[int] = Field(
        description="How many places cross over at the start of each period after the first."
    )


Design = Annotated[
    SimpleDesign
    | CompleteDesign
    | BlockedDesign
    | ClusterDesign
    | StratifiedClusterDesign
    | MatchedPairClusterDesign
    | ConstrainedClusterDesign
    | MinimisationDesign
    | SteppedWedgeDesign,
    Field(discriminator="method"),
]

PARTICIPANT_METHODS = {"simple", "complete", "blocked", "minimisation"}
PLACE_METHODS = {
    "cluster",
    "stratified_cluster",
    "matched_pair_cluster",
    "constrained_cluster",
    "stepped_wedge",
}


# --- outcomes ------------------------------------------------------------------------


class Window(Strict):
    months: int = Field(
        gt=0,
        description="Measured this long after each unit's randomisation (in a place design, "
        "after each person joins).",
    )
    tolerance_weeks: int = Field(0, ge=0, description="Accepted either side of the due date.")


class FromMeasurement(Strict):
    """A value recorded at follow-up (a survey score, a status on a date)."""

    source_kind: Literal["measurement"] = Field("measurement", alias="from")


class FromSpells(Strict):
    """Binary: in paid work for at least ``min_weeks`` (cumulative) within the window,
    from employment spells with start and end dates. 0 means any day in work."""

    source_kind: Literal["spells"] = Field(alias="from")
    min_weeks: float = Field(13, ge=0)


class FromEvents(Strict):
    """Dated events: binary outcomes are 'any event in the window', counts the number."""

    source_kind: Literal["events"] = Field(alias="from")


Derivation = Annotated[
    FromMeasurement | FromSpells | FromEvents, Field(discriminator="source_kind")
]


class Outcome(Strict):
    name: str = Field(pattern=NAME)
    primary: bool = False
    type: Literal["binary", "continuous", "count"]
    label: str
    wording: str = Field(description="Plain words for the scrutiny summary.")
    window: Window
    source: Agency
    direction: Literal["higher_is_better", "lower_is_better"] = "higher_is_better"
    minimal_important_difference: float = Field(gt=0)
    min: float | None = None
    max: float | None = None
    derive: Derivation = Field(
        default_factory=FromMeasurement,
        description="How the outcome is worked out from imported records.",
    )


# --- analysis plan -------------------------------------------------------------------


class WildBootstrap(Strict):
    draws: int = Field(9999, ge=99)


class RandomisationInference(Strict):
    draws: int = Field(10000, ge=100)
    statistic: Literal["estimate", "t"] = "estimate"


class Sensitivity(Strict):
    wild_cluster_bootstrap: WildBootstrap | None = None
    randomisation_inference: RandomisationInference | None = None
    missing_data: Literal["none", "multiple_imputation", "inverse_probability_weighting"] = "none"


class Prior(Strict):
    kind: Literal["sceptical", "normal", "flat"] = "sceptical"
    mean: float | None = None
    sd: float | None = Field(None, gt=0)


class OutcomeModel(Strict):
    outcome: str
    model: Literal["ols", "linear_probability", "logistic", "poisson", "negative_binomial"]


class AnalysisPlan(Strict):
    estimand: Literal["ITT", "CACE"] = "ITT"
    compliance: str | None = Field(None, description="Who counts as having received the arm.")
    models: list[OutcomeModel] = Field(default_factory=list)
    covariates: list[str] = Field(default_factory=list)
    se: SeType = "auto"
    alpha: float = Field(0.05, gt=0, lt=0.5)
    sensitivity: Sensitivity = Field(default_factory=Sensitivity)
    multiplicity: Literal["holm", "bonferroni", "hochberg", "fdr_bh", "none"] = "holm"
    subgroups: list[str] = Field(default_factory=list)
    prior: Prior = Field(default_factory=Prior)


# --- outcome imports ------------------------------------------------------------------


class ColumnMap(Strict):
    """Which columns of an agency's file hold one outcome's records."""

    outcome: str
    value: str | None = Field(None, description="Column with the value (measurements).")
    date: str | None = Field(None, description="Column with the date measured or of the event.")
    start: str | None = Field(None, description="Column with a spell's start date.")
    end: str | None = Field(None, description="Column with a spell's end date (blank: open).")


class ImportSource(Strict):
    source: Agency
    id_column: str = "id"
    columns: list[ColumnMap] = Field(min_length=1)


# --- planning, progression, costs ----------------------------------------------------


class SampleSize(Strict):
    target_units: int = Field(gt=0, description="Participants to randomise (all arms).")
    target_places: int | None = Field(None, gt=0)
    recruitment_months: float = Field(gt=0)
    baseline_rate: float | None = Field(None, gt=0, lt=1)
    baseline_sd: float | None = Field(None, gt=0)
    icc: float | None = Field(None, ge=0, lt=1)
    cluster_size_cv: float | None = Field(None, ge=0)
    r_squared: float = Field(0.0, ge=0, lt=1)
    expected_effect: float


class ProgressionCriterion(Strict):
    metric: Literal["recruitment_per_month", "retention", "adherence", "data_completeness"]
    label: str
    green: float = Field(description="At or above this the pilot is on track.")
    amber: float = Field(description="At or above this (and below green) it needs attention.")


class UnitCost(Strict):
    arm: str
    agency: Payer
    item: str
    unit_cost: float = Field(ge=0)
    quantity: float = Field(1.0, ge=0, description="Units of the item per participant.")


class OutcomeValue(Strict):
    outcome: str
    agency: Payer
    value: float = Field(description="Value to the agency of one unit of the outcome.")
    description: str


class Costs(Strict):
    currency: Literal["GBP"] = "GBP"
    price_year: int | None = None
    unit_costs: list[UnitCost] = Field(default_factory=list)
    outcome_values: list[OutcomeValue] = Field(default_factory=list)


class Audience(Strict):
    area: str = Field(description="Where the pilot runs, as residents would say it.")
    commission: str | None = Field(None, description="Body that reads the summary.")
    people: str = Field("people", description="How participants are called in the summary.")


class Reporting(Strict):
    suppression_threshold: int = Field(10, ge=1)
    audience: Audience
    blinded: bool = Field(False, description="Report arms under neutral labels until unblinded.")


class DataProtection(Strict):
    controller: str
    lawful_basis: str
    retention_months: int = Field(gt=0)
    evaluator_reference: bool = Field(
        False, description="Evaluators may keep their own reference for follow-up lists."
    )


# --- the protocol --------------------------------------------------------------------


class Protocol(Strict):
    """A pilot's pre-registered plan, loaded from one YAML file."""

    id: str = Field(pattern=SLUG, description="Short name of the pilot, e.g. hackney-keyworker.")
    title: str
    version: str
    owner: Owner
    iteration_of: str | None = Field(None, pattern=SLUG)
    answers: list[str] = Field(description="Recommendations the pilot answers, e.g. ['6b', '6d'].")
    summary: str
    hypotheses: list[str] = Field(min_length=1)
    start_date: date | None = None
    population: Population
    fields: list[BaselineField] = Field(min_length=1)
    unit: Unit
    arms: list[Arm] = Field(min_length=2)
    design: Design
    outcomes: list[Outcome] = Field(min_length=1)
    analysis: AnalysisPlan = Field(default_factory=AnalysisPlan)
    sample_size: SampleSize
    progression: list[ProgressionCriterion] = Field(default_factory=list)
    costs: Costs = Field(default_factory=Costs)
    reporting: Reporting
    data_protection: DataProtection
    imports: list[ImportSource] = Field(
        default_factory=list, description="Column mappings of each agency's outcome files."
    )

    @property
    def primary(self) -> Outcome:
        return next(o for o in self.outcomes if o.primary)

    @property
    def control(self) -> Arm:
        return self.arms[0]

    def field(self, name: str) -> BaselineField | None:
        return next((f for f in self.fields if f.name == name), None)

    def place_field_def(self, name: str) -> BaselineField | None:
        return next((f for f in self.unit.place_fields if f.name == name), None)


# --- cross-field checks --------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: tuple[str | int, ...]
    message: str
    hint: str = ""


def _duplicates(names: list[str]) -> list[int]:
    seen: set[str] = set()
    out = []
    for i, n in enumerate(names):
        if n in seen:
            out.append(i)
        seen.add(n)
    return out


def _check_field_defs(defs: list[BaselineField], where: tuple[str | int, ...]) -> list[Problem]:
    out = []
    for i in _duplicates([f.name for f in defs]):
        out.append(Problem((*where, i, "name"), f"field {defs[i].name!r} is declared twice"))
    for i, f in enumerate(defs):
        if f.type == "category" and not f.levels:
            out.append(
                Problem(
                    (*where, i, "type"),
                    f"category field {f.name!r} has no levels",
                    "list its allowed values under 'levels'",
                )
            )
        if f.type != "category" and f.levels is not None:
            out.append(
                Problem(
                    (*where, i, "levels"),
                    f"only category fields take levels; {f.name!r} is {f.type}",
                )
            )
        if f.levels and len(set(f.levels)) != len(f.levels):
            out.append(Problem((*where, i, "levels"), f"field {f.name!r} repeats a level"))
        if f.min is not None and f.max is not None and f.min > f.max:
            out.append(Problem((*where, i, "min"), f"min {f.min} is above max {f.max}"))
    return out


def _known(names: list[str], pool: dict[str, BaselineField], path, what: str) -> list[Problem]:
    out = []
    for i, n in enumerate(names):
        if n not in pool:
            out.append(
                Problem(
                    (*path, i),
                    f"{what} {n!r} is not a declared field",
                    f"declared: {', '.join(sorted(pool)) or 'none'}",
                )
            )
    return out


def _numeric(names, pool, path, what) -> list[Problem]:
    out = []
    for i, n in enumerate(names):
        f = pool.get(n)
        if f is not None and f.type not in {"integer", "number", "boolean"}:
            out.append(
                Problem(
                    (*path, i),
                    f"{what} {n!r} is {f.type}; distances need numbers",
                    "use a numeric place field (a score, a rate)",
                )
            )
    return out


def _categorical(names, pool, path, what) -> list[Problem]:
    out = []
    for i, n in enumerate(names):
        f = pool.get(n)
        if f is not None and f.type not in {"category", "boolean"}:
            out.append(
                Problem(
                    (*path, i),
                    f"{what} {n!r} is {f.type}; it must be a category or boolean field",
                    "add a banded category field for it",
                )
            )
    return out


def _check_design(p: Protocol) -> list[Problem]:
    d = p.design
    out: list[Problem] = []
    person = {f.name: f for f in p.fields}
    places = {f.name: f for f in p.unit.place_fields}
    if p.unit.level == "participant" and d.method not in PARTICIPANT_METHODS:
        out.append(
            Problem(
                ("design", "method"),
                f"'{d.method}' randomises places but the unit is participant",
                "set unit.level: place, or use " + ", ".join(sorted(PARTICIPANT_METHODS)),
            )
        )
    if p.unit.level == "place" and d.method not in PLACE_METHODS:
        out.append(
            Problem(
                ("design", "method"),
                f"'{d.method}' randomises participants but the unit is place",
                "use " + ", ".join(sorted(PLACE_METHODS)),
            )
        )
    if isinstance(d, BlockedDesign):
        out += _known(d.strata, person, ("design", "strata"), "stratum")
        out += _categorical(d.strata, person, ("design", "strata"), "stratum")
        total = sum(a.ratio for a in p.arms)
        whole = all(float(a.ratio).is_integer() and a.ratio > 0 for a in p.arms)
        if all(a.ratio > 0 for a in p.arms) and not whole:
            out.append(
                Problem(
                    ("design", "block_sizes"),
                    "blocks need whole-number allocation ratios",
                    "write ratios such as 2 and 1 rather than 1 and 0.5",
                )
            )
        for i, b in enumerate(d.block_sizes):
            if not whole:
                break  # reported on the ratios themselves
            if b <= 0 or b % int(total):
                out.append(
                    Problem(
                        ("design", "block_sizes", i),
                        f"block size {b} is not a positive multiple of the ratio total {total:g}",
                        "blocks must hold whole multiples of the allocation ratio",
                    )
                )
        if not d.block_sizes:
            out.append(Problem(("design", "block_sizes"), "no block sizes given"))
    elif isinstance(d, StratifiedClusterDesign):
        out += _known(d.strata, places, ("design", "strata"), "stratum")
        out += _categorical(d.strata, places, ("design", "strata"), "stratum")
    elif isinstance(d, MatchedPairClusterDesign):
        out += _known(d.match_on, places, ("design", "match_on"), "matching variable")
        out += _numeric(d.match_on, places, ("design", "match_on"), "matching variable")
        if len(p.arms) != 2:
            out.append(Problem(("design", "method"), "pair matching needs exactly two arms"))
    elif isinstance(d, ConstrainedClusterDesign):
        out += _known(d.balance_on, places, ("design", "balance_on"), "balance variable")
        out += _numeric(d.balance_on, places, ("design", "balance_on"), "balance variable")
        if not 0 < d.keep_fraction <= 1:
            out.append(Problem(("design", "keep_fraction"), "keep_fraction must be in (0, 1]"))
        if d.candidates < 100:
            out.append(
                Problem(("design", "candidates"), "score at least 100 candidate allocations")
            )
    elif isinstance(d, MinimisationDesign):
        names = [f.field for f in d.factors]
        out += _known(names, person, ("design", "factors"), "factor")
        out += _categorical(names, person, ("design", "factors"), "factor")
        for i, f in enumerate(d.factors):
            if f.weight <= 0:
                out.append(Problem(("design", "factors", i, "weight"), "weights must be positive"))
        k = len(p.arms)
        low = (k - 1) / k if k > 2 else 0.5
        if not low <= d.probability <= 1:
            out.append(
                Problem(
                    ("design", "probability"),
                    f"probability {d.probability} must be between {low:.3g} and 1 for {k} arms",
                    "below that, an arm tied for least imbalance could be less likely than an "
                    "arm that is not",
                )
            )
    elif isinstance(d, SteppedWedgeDesign):
        if d.periods < 3:
            out.append(Problem(("design", "periods"), "a stepped wedge needs at least 3 periods"))
        if len(d.places_per_step) != d.periods - 1:
            out.append(
                Problem(
                    ("design", "places_per_step"),
                    f"give one count for each of the {d.periods - 1} periods after the first",
                )
            )
        if any(n <= 0 for n in d.places_per_step):
            out.append(
                Problem(("design", "places_per_step"), "each step must move at least one place")
            )
        if len(p.arms) != 2:
            out.append(Problem(("arms",), "a stepped wedge compares exactly two conditions"))
        target = p.sample_size.target_places
        if target is not None and sum(d.places_per_step) != target:
            out.append(
                Problem(
                    ("design", "places_per_step"),
                    f"steps move {sum(d.places_per_step)} places but target_places is {target}",
                )
            )
    return out


def _check_rules(p: Protocol) -> list[Problem]:
    out = []
    fields = {f.name: f for f in p.fields}
    for i, r in enumerate(p.population.eligibility):
        c = r.condition
        f = fields.get(c.field)
        path = ("population", "eligibility", i, "rule")
        if f is None:
            out.append(
                Problem(
                    path,
                    f"rule uses {c.field!r}, which is not a declared field",
                    f"declared: {', '.join(sorted(fields))}",
                )
            )
            continue
        numeric = f.type in {"integer", "number"}
        if c.op in {"<", "<=", ">", ">=", "between"} and not numeric:
            out.append(Problem(path, f"'{c.op}' needs a number field; {c.field!r} is {f.type}"))
        for v in c.values():
            if f.type == "category" and f.levels and v not in f.levels:
                out.append(
                    Problem(
                        path,
                        f"{v!r} is not a level of {c.field!r}",
                        f"levels: {', '.join(f.levels)}",
                    )
                )
            if numeric and (isinstance(v, bool) or not isinstance(v, int | float)):
                out.append(Problem(path, f"{v!r} is not a number"))
    return out


def consistency_problems(p: Protocol) -> list[Problem]:
    """Every cross-field error in a structurally valid protocol, each with its path."""
    out: list[Problem] = []
    out += _check_field_defs(p.fields, ("fields",))
    out += _check_field_defs(p.unit.place_fields, ("unit", "place_fields"))
    person = {f.name: f for f in p.fields}

    if p.unit.level == "place" and not p.unit.place_field:
        out.append(
            Problem(
                ("unit",),
                "a place design has no place field",
                "set unit.place_field to the field naming each person's place",
            )
        )
    if p.unit.place_field and p.unit.place_field not in person:
        out.append(
            Problem(
                ("unit", "place_field"),
                f"place field {p.unit.place_field!r} is not a declared field",
                "add it under 'fields' as a category or text",
            )
        )
    if p.unit.level == "place" and p.unit.individuals is None:
        out.append(
            Problem(
                ("unit",),
                "a place design must describe the individuals in each place",
                "add unit.individuals.description",
            )
        )

    for i in _duplicates([a.name for a in p.arms]):
        out.append(Problem(("arms", i, "name"), f"arm {p.arms[i].name!r} is named twice"))
    for i, a in enumerate(p.arms):
        if not a.ratio > 0:
            out.append(
                Problem(
                    ("arms", i, "ratio"),
                    f"ratio {a.ratio:g} is not positive",
                    "allocation ratios must be above zero",
                )
            )
    out += _check_design(p)
    out += _check_rules(p)

    primaries = [i for i, o in enumerate(p.outcomes) if o.primary]
    if not primaries:
        out.append(Problem(("outcomes",), "no primary outcome", "mark exactly one 'primary: true'"))
    for i in primaries[1:]:
        out.append(
            Problem(
                ("outcomes", i, "primary"),
                f"a second primary outcome ({p.outcomes[i].name!r})",
                "keep one primary; the rest are secondary",
            )
        )
    outcome_names = {o.name for o in p.outcomes}
    for i in _duplicates([o.name for o in p.outcomes]):
        out.append(Problem(("outcomes", i, "name"), f"outcome {p.outcomes[i].name!r} twice"))
    for i, o in enumerate(p.outcomes):
        if o.min is not None and o.max is not None and o.min > o.max:
            out.append(Problem(("outcomes", i, "min"), f"min {o.min} is above max {o.max}"))
        if o.name in person:
            out.append(Problem(("outcomes", i, "name"), f"{o.name!r} is also a baseline field"))

    for i, o in enumerate(p.outcomes):
        kind = o.derive.source_kind
        if kind == "spells" and o.type != "binary":
            out.append(
                Problem(
                    ("outcomes", i, "derive"),
                    f"employment spells give a binary outcome; {o.name!r} is {o.type}",
                )
            )
        if kind == "events" and o.type == "continuous":
            out.append(
                Problem(
                    ("outcomes", i, "derive"),
                    f"events give a binary or count outcome; {o.name!r} is continuous",
                )
            )
    by_name = {o.name: o for o in p.outcomes}
    for i in _duplicates([s.source for s in p.imports]):
        out.append(Problem(("imports", i, "source"), f"{p.imports[i].source} is mapped twice"))
    for i, src in enumerate(p.imports):
        for j, c in enumerate(src.columns):
            path = ("imports", i, "columns", j)
            o = by_name.get(c.outcome)
            if o is None:
                out.append(
                    Problem(
                        (*path, "outcome"),
                        f"{c.outcome!r} is not a declared outcome",
                        f"outcomes: {', '.join(by_name)}",
                    )
                )
                continue
            if o.source != src.source:
                out.append(
                    Problem(
                        (*path, "outcome"), f"{c.outcome!r} comes from {o.source}, not {src.source}"
                    )
                )
            need = {"spells": ["start"], "events": ["date"], "measurement": ["value", "date"]}[
                o.derive.source_kind
            ]
            for key in need:
                if getattr(c, key) is None:
                    out.append(
                        Problem(
                            path, f"{c.outcome!r} ({o.derive.source_kind}) needs the '{key}' column"
                        )
                    )
    a = p.analysis
    if a.estimand == "CACE" and not a.compliance:
        out.append(
            Problem(
                ("analysis", "compliance"),
                "a CACE estimand needs a compliance definition",
                "say who counts as having received the intervention",
            )
        )
    out += _known(a.covariates, person, ("analysis", "covariates"), "covariate")
    out += _known(a.subgroups, person, ("analysis", "subgroups"), "subgroup")
    out += _categorical(a.subgroups, person, ("analysis", "subgroups"), "subgroup")
    for i, m in enumerate(a.models):
        o = next((o for o in p.outcomes if o.name == m.outcome), None)
        if o is None:
            out.append(
                Problem(
                    ("analysis", "models", i, "outcome"), f"{m.outcome!r} is not a declared outcome"
                )
            )
            continue
        fits = {
            "binary": {"linear_probability", "logistic"},
            "continuous": {"ols"},
            "count": {"ols", "poisson", "negative_binomial"},
        }[o.type]
        if m.model not in fits:
            out.append(
                Problem(
                    ("analysis", "models", i, "model"),
                    f"{m.model} does not suit a {o.type} outcome",
                    f"use one of {', '.join(sorted(fits))}",
                )
            )
    clustered = p.unit.level == "place"
    if clustered and a.se in {"hc2", "hc1"}:
        out.append(
            Problem(
                ("analysis", "se"),
                f"{a.se} ignores clustering in a place design",
                "use cr2 (or auto)",
            )
        )
    if not clustered and a.se in {"cr2", "cr1"} and not p.unit.place_field:
        out.append(Problem(("analysis", "se"), f"{a.se} needs clusters but no place field is set"))
    if a.sensitivity.wild_cluster_bootstrap and not p.unit.place_field:
        out.append(
            Problem(
                ("analysis", "sensitivity", "wild_cluster_bootstrap"),
                "a wild cluster bootstrap needs a place field",
            )
        )
    if a.prior.kind == "normal" and (a.prior.mean is None or a.prior.sd is None):
        out.append(Problem(("analysis", "prior"), "a normal prior needs mean and sd"))

    s = p.sample_size
    primary = next((o for o in p.outcomes if o.primary), None)
    if primary is not None and primary.type == "binary" and s.baseline_rate is None:
        out.append(Problem(("sample_size",), "a binary primary outcome needs baseline_rate"))
    if primary is not None and primary.type != "binary" and s.baseline_sd is None:
        out.append(Problem(("sample_size",), f"a {primary.type} primary outcome needs baseline_sd"))
    if clustered and (s.target_places is None or s.icc is None):
        out.append(Problem(("sample_size",), "a place design needs target_places and icc"))

    for i, c in enumerate(p.progression):
        if c.green < c.amber:
            out.append(
                Problem(
                    ("progression", i, "green"),
                    f"thresholds out of order: green {c.green:g} is below amber {c.amber:g}",
                    "green is the higher bar: at or above green is on track",
                )
            )
        if c.metric != "recruitment_per_month" and not (0 <= c.amber <= 1 and 0 <= c.green <= 1):
            out.append(
                Problem(
                    ("progression", i),
                    f"{c.metric} is a proportion; thresholds must be between 0 and 1",
                )
            )
    for i in _duplicates([c.metric for c in p.progression]):
        out.append(Problem(("progression", i, "metric"), f"{p.progression[i].metric} twice"))

    arm_names = {x.name for x in p.arms}
    for i, u in enumerate(p.costs.unit_costs):
        if u.arm not in arm_names:
            out.append(
                Problem(
                    ("costs", "unit_costs", i, "arm"),
                    f"{u.arm!r} is not an arm",
                    f"arms: {', '.join(sorted(arm_names))}",
                )
            )
    for i, v in enumerate(p.costs.outcome_values):
        if v.outcome not in outcome_names:
            out.append(
                Problem(
                    ("costs", "outcome_values", i, "outcome"), f"{v.outcome!r} is not an outcome"
                )
            )
    if p.iteration_of == p.id:
        out.append(Problem(("iteration_of",), "a pilot cannot be an iteration of itself"))
    return out


def slug_ok(text: str) -> bool:
    return re.match(SLUG, text) is not None


def schema() -> dict[str, Any]:
    """JSON Schema of the protocol, for editors that validate and autocomplete YAML."""
    s = Protocol.model_json_schema()
    s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return s
