"""An independent reader's attack on published counts, by integer programming.

Written apart from evalkit.disclosure on purpose: it reads only the labels a page shows
("37", "fewer than 10", "withheld") and the sums a reader knows from the CONSORT rules
and the tables, and asks, for every hidden count, for its smallest and largest whole
value. A label is read the way a reader would read it: "fewer than N" is 1 to N - 1
(zeros are shown); "withheld" is any count a page would not otherwise show as a number
or as "fewer than N", so 0 or N and over. That "or" is modelled exactly with a 0/1
variable, so nothing the module assumes about which cells it withholds is taken on trust.
"not published" is a count no page prints and no published figure gives (an outcome's
events when its rates are withheld): any whole number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

BIG = 10_000  # larger than any count in these pilots: "no upper bound"

Relation = tuple[Sequence[str], Sequence[str]]  # sum(left) == or <= sum(right)


def parse_label(label: str, threshold: int) -> int | str:
    """A page's label as a number, or "small" / "withheld"."""
    text = label.strip().replace(",", "")
    if text.isdigit():
        return int(text)
    if text == f"fewer than {threshold}":
        return "small"
    if text == "withheld":
        return "withheld"
    if text == "not published":
        return "unknown"
    raise ValueError(f"not a count label: {label!r}")


def attack(
    labels: Mapping[str, str],
    equal: Iterable[Relation],
    at_most: Iterable[Relation],
    threshold: int,
) -> dict[str, tuple[int, int]]:
    """Smallest and largest whole value of every hidden cell that fits everything shown.
    ``equal``: sum(left) == sum(right); ``at_most``: sum(left) <= sum(right)."""
    read = {k: parse_label(v, threshold) for k, v in labels.items()}
    hidden = sorted(k for k, v in read.items() if isinstance(v, str))
    withheld = [k for k in hidden if read[k] == "withheld"]
    n_x, n_z = len(hidden), len(withheld)
    col = {k: i for i, k in enumerate(hidden)}
    size = n_x + n_z
    constraints = []

    def row(left: Sequence[str], right: Sequence[str]) -> tuple[np.ndarray, float] | None:
        if any(k not in read for k in (*left, *right)):
            return None
        a, const = np.zeros(size), 0.0
        for names, sign in ((left, 1.0), (right, -1.0)):
            for k in names:
                if k in col:
                    a[col[k]] += sign
                else:
                    const -= sign * read[k]
        return a, const

    for kind, relations in (("eq", equal), ("le", at_most)):
        for left, right in relations:
            r = row(left, right)
            if r is None or not r[0].any():
                continue
            a, const = r
            lo = const if kind == "eq" else -np.inf
            constraints.append(LinearConstraint(a[None, :], lo, const))
    for j, k in enumerate(withheld):  # 0, or threshold and over: x >= t*z, x <= BIG*z
        a = np.zeros(size)
        a[col[k]], a[n_x + j] = 1.0, -threshold
        constraints.append(LinearConstraint(a[None, :], 0, np.inf))
        a = np.zeros(size)
        a[col[k]], a[n_x + j] = 1.0, -BIG
        constraints.append(LinearConstraint(a[None, :], -np.inf, 0))
    lo = [1 if read[k] == "small" else 0 for k in hidden] + [0] * n_z  # unknown: 0 to BIG
    hi = [threshold - 1 if read[k] == "small" else BIG for k in hidden] + [1] * n_z
    out = {}
    for k, i in col.items():
        ends = []
        for sign in (1.0, -1.0):
            c = np.zeros(size)
            c[i] = sign
            res = milp(c, constraints=constraints, integrality=np.ones(size), bounds=Bounds(lo, hi))
            assert res.status == 0, (k, res.message)
            ends.append(round(sign * res.fun))
        out[k] = (ends[0], ends[1])
    return out


def recoverable(
    labels: Mapping[str, str],
    equal: Iterable[Relation],
    at_most: Iterable[Relation],
    threshold: int,
) -> dict[str, int]:
    """Hidden cells with only one possible value, and that value."""
    return {k: lo for k, (lo, hi) in attack(labels, equal, at_most, threshold).items() if lo == hi}


def consort_relations(arms: Sequence[str]) -> list[Relation]:
    """The sums printed on every CONSORT diagram, in the names the page parsers use."""
    return [
        (["assessed"], ["randomised", "excluded"]),
        (["randomised"], [f"{a}.allocated" for a in arms]),
        *(([f"{a}.allocated"], [f"{a}.analysed", f"{a}.lost", f"{a}.not_yet_due"]) for a in arms),
    ]


def consort_from_page(html: str, arms: Mapping[str, str]) -> dict[str, str]:
    """The CONSORT labels as a reader sees them on a summary: the line under the flow and
    the flow table. ``arms``: row label on the page -> name to use."""
    line = re.search(
        r"Assessed for eligibility: ([^.]+)\. Not eligible: ([^.]+)\. Randomised: ([^.]+)\.",
        html,
    )
    assert line is not None
    seen = dict(zip(("assessed", "excluded", "randomised"), line.groups(), strict=True))
    table = html[html.index("The same flow as a table") :]
    boxes = ("allocated", "withdrawn", "did_not_start", "lost", "not_yet_due", "analysed")
    for label, arm in arms.items():
        row = re.search(rf'<th scope="row">{label}</th>((?:<td class="n">[^<]*</td>)+)', table)
        assert row is not None, label
        values = re.findall(r'<td class="n">([^<]*)</td>', row.group(1))
        seen.update({f"{arm}.{box}": v for box, v in zip(boxes, values, strict=True)})
    return seen


def reader_relations(results: Mapping) -> tuple[list[Relation], list[Relation]]:
    """Everything a reader knows ties the counts of one results.json together, written
    from the CONSORT rules and the tables (not from evalkit.disclosure), in the names
    ``evalkit.disclosure.Shown.count`` takes. Returns (equal, at_most)."""
    c = results["consort"]
    equal: list[Relation] = [(["assessed"], ["randomised", "excluded"])]
    at_most: list[Relation] = []
    reasons = [f"excluded.reason.{i}" for i in range(len(c["excluded"]["reasons"]))]
    if sum(c["excluded"]["reasons"].values()) == c["excluded"]["total"]:
        equal.append((["excluded"], reasons))
    else:  # a person may have several reasons, and has at least one
        at_most += [([r], ["excluded"]) for r in reasons] + [(["excluded"], reasons)]
    equal.append((["randomised"], [f"arm.{a['arm']}.randomised" for a in c["arms"]]))
    for a in c["arms"]:
        k = f"arm.{a['arm']}"
        equal.append(
            (
                [f"{k}.randomised"],
                [f"{k}.{b}" for b in ("analysed", "lost_to_follow_up", "not_yet_due")],
            )
        )
        at_most.append(([f"{k}.withdrawn"], [f"{k}.randomised"]))
        started = [f"{k}.did_not_start"] + ([f"{k}.received"] if a["received"] is not None else [])
        if a["received"] is not None and a["received"] + a["did_not_start"] == a["randomised"]:
            equal.append(([f"{k}.randomised"], started))
        at_most.append((started, [f"{k}.randomised"]))
    control = next(a["name"] for a in results["arms"] if a.get("control"))
    treated = next(a["name"] for a in results["arms"] if not a.get("control"))
    for o in [results["primary"], *results.get("secondary", [])]:
        name = o["outcome"]
        analysed = o.get("analysed") or {}
        for arm in analysed:
            if o.get("primary"):
                equal.append(([f"{name}.{arm}.analysed"], [f"arm.{arm}.analysed"]))
            else:
                at_most.append(([f"{name}.{arm}.analysed"], [f"arm.{arm}.randomised"]))
        b = o.get("binary")
        if b:
            for arm in (control, treated):
                equal.append(
                    (
                        [f"{name}.{arm}.analysed"],
                        [f"{name}.{arm}.events", f"{name}.{arm}.non_events"],
                    )
                )
        e = o.get("effect")
        if e and sum(analysed.values()) == e["n"]:
            equal.append(([f"{name}.n"], [f"{name}.{arm}.analysed" for arm in analysed]))
        for s in o.get("subgroups") or []:
            levels = [f"{name}.subgroup.{s['subgroup']}.{lv['level']}" for lv in s["levels"]]
            if e and sum(lv["n"] for lv in s["levels"]) == e["n"]:
                equal.append(([f"{name}.n"], levels))
    return equal, at_most
