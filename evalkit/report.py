"""The HTML reports: a scrutiny summary, a technical report and an index of pilots.

A report is built from results.json alone (and learning.json for a chain of iterations):
it never recomputes a result, so what the commission reads is what the analysis wrote.
Building the page content (`summary_context`, `technical_context`, `index_context`) is
pure; `write_reports` and `write_index` are the file edges. Templates are Jinja2 files in
templates/; a council restyles by copying one into a folder given with --templates.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from evalkit import charts, evidence, wording
from evalkit.disclosure import (
    Shown,
    attrition_hidden,
    cost_totals_hidden,
    flow_hidden,
    lost_hidden,
    rates_hidden,
    shown,
    starts_hidden,
    subgroup_hidden,
)
from evalkit.errors import UserError
from evalkit.workspace import write_atomically

GLOSSARY = [
    (
        "Randomised pilot",
        "A test in which chance decides who is offered the new support, so that the two "
        "groups are alike and any difference in outcomes can be put down to the support.",
    ),
    (
        "Usual support",
        "What people would have been offered anyway; the comparison for the new support.",
    ),
    (
        "Confidence interval",
        "The range of effects that fit what the pilot saw. A wide range means the pilot "
        "cannot pin the effect down.",
    ),
    (
        "Sceptical view",
        "Before the pilot began, we registered the assumption that large effects are "
        "unlikely. The chances quoted start from that assumption and are updated by the "
        "pilot's results.",
    ),
    (
        "Smallest difference that matters",
        "The smallest effect that would justify the cost, agreed before the pilot began.",
    ),
    (
        "Pre-registration",
        "The plan for the pilot and its analysis was fixed and fingerprinted (the hash) "
        "before anyone was allocated; any later change is recorded with its reason. "
        "Referrals entered late with earlier dates are listed with the reason given.",
    ),
    (
        "Hash",
        "A fingerprint of the registered plan: change one character and the fingerprint "
        "changes, so anyone can check that the plan was not altered.",
    ),
    (
        "Evidence security (padlocks)",
        "How far the result can be relied on, from 0 to 5 padlocks, judged on the design, "
        "the number of people and places, how many were lost, balance, and how outcomes "
        "were measured.",
    ),
    (
        "Progression criteria",
        "Targets agreed before the pilot for deciding whether to scale it up, adapt it or "
        "stop: green is on track, amber needs attention, red is off track.",
    ),
]


# --- templates -----------------------------------------------------------------------


def template_dirs(custom: Path | None = None) -> list[str]:
    """Where templates are looked up: a council's own folder first, then evalkit's."""
    dirs = [str(custom)] if custom else []
    with contextlib.suppress(ModuleNotFoundError):  # installed from a wheel
        spec = importlib.util.find_spec("evalkit.report_templates")
        dirs += list(spec.submodule_search_locations or []) if spec else []
    source = Path(__file__).resolve().parents[1] / "templates"  # a source checkout
    if source.is_dir():
        dirs.append(str(source))
    return dirs


def environment(custom: Path | None = None) -> jinja2.Environment:
    if custom is not None and not custom.is_dir():
        raise UserError(f"{custom} is not a folder", "give the folder that holds your templates")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dirs(custom)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = lambda x, d=0: "—" if x is None else f"{x * 100:.{d}f}%"
    env.filters["money"] = lambda x: "—" if x is None else f"£{x:,.0f}"
    env.filters["pvalue"] = _pvalue
    return env


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isinf(x):
            return "∞"
        if math.isnan(x):
            return "—"
        if x.is_integer() and abs(x) < 1e15 and digits <= 3:
            return f"{int(x):,}"
        return f"{x:,.{digits}f}"
    return str(x)


def _pvalue(p: float | None) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


# --- page content --------------------------------------------------------------------


def _flow(results: Mapping[str, Any], counts: Shown) -> tuple[str, list[dict[str, Any]]]:
    c = results["consort"]
    arms = []
    rows = []
    for a in c["arms"]:
        k = f"arm.{a['arm']}"
        places = f" ({a['places']} places)" if a.get("places") else ""
        arm = charts.FlowArm(
            label=a["label"] + places,
            allocated=counts.count(f"{k}.randomised"),
            withdrawn=counts.count(f"{k}.withdrawn"),
            did_not_start=counts.count(f"{k}.did_not_start"),
            lost=counts.count(f"{k}.lost_to_follow_up"),
            not_yet_due=counts.count(f"{k}.not_yet_due"),
            analysed=counts.count(f"{k}.analysed"),
        )
        arms.append(arm)
        rows.append(arm.__dict__)
    reasons = [
        (why, counts.count(f"excluded.reason.{i}"))
        for i, why in enumerate(c["excluded"]["reasons"])
    ]
    svg = charts.consort(
        counts.count("assessed"),
        counts.count("excluded"),
        reasons,
        counts.count("randomised"),
        arms,
        str(c["places_randomised"]) if c.get("places_randomised") else None,
    )
    return svg, rows


def _scaled(outcome: Mapping[str, Any]) -> charts.ForestRow:
    sign = 1 if outcome["direction"] == "higher_is_better" else -1
    mid = outcome["minimal_important_difference"]
    e = outcome["effect"]
    low, high = sorted((sign * e["conf_low"] / mid, sign * e["conf_high"] / mid))
    return charts.ForestRow(
        label=outcome["label"],
        estimate=sign * e["estimate"] / mid,
        low=low,
        high=high,
        primary=bool(outcome.get("primary")),
    )


def _outcome_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for o in [results["primary"], *results.get("secondary", [])]:
        e = o["effect"]
        if not e:
            rows.append(
                {
                    "label": o["label"],
                    "primary": bool(o.get("primary")),
                    "estimate": "not estimable",
                    "interval": str(o.get("not_estimable") or ""),
                    "mid": wording.mid_words(o),
                    "reading": "cannot be told",
                    "source": o["source"],
                    "scaled": None,
                }
            )
            continue
        rows.append(
            {
                "label": o["label"],
                "primary": bool(o.get("primary")),
                "estimate": wording.amount(o, e["estimate"]),
                "interval": f"{wording.amount(o, e['conf_low'])} to "
                f"{wording.amount(o, e['conf_high'])}",
                "mid": wording.mid_words(o),
                "reading": wording.verdict(o, results["alpha"])["phrase"],
                "source": o["source"],
                "scaled": _scaled(o),
            }
        )
    return rows


def is_synthetic(results: Mapping[str, Any]) -> bool:
    """Demonstration pilots say so in their title; their data files say so in their names."""
    files = [v.get("file", "") for v in results["provenance"].get("data_vintage", [])]
    return "synthetic" in results["pilot"]["title"].lower() or (
        bool(files) and all("synthetic" in f for f in files)
    )


def summary_context(
    results: Mapping[str, Any],
    learning: Mapping[str, Any] | None = None,
    counts: Shown | None = None,
) -> dict[str, Any]:
    """Everything the scrutiny summary shows, with counts disclosure-controlled (``counts``:
    the technical report passes its own, exact on request)."""
    counts = counts or shown(results)
    consort_svg, consort_rows = _flow(results, counts)
    outcomes = _outcome_rows(results)
    control, treated = wording.arms(results)
    return {
        "results": results,
        "pilot": results["pilot"],
        "synthetic": is_synthetic(results),
        "arms": {"control": control, "treated": treated},
        "headline": wording.headline(results, counts),
        "how_sure": wording.how_sure(results),
        "rating": evidence.rate(results, attrition_hidden(results, counts)),
        "progression": wording.progression(results, counts),
        "costs": wording.costs(results),
        "consort_svg": consort_svg,
        "consort_rows": consort_rows,
        "counts": counts,
        "outcomes": outcomes,
        "forest_svg": charts.forest([r["scaled"] for r in outcomes if r["scaled"]])
        if any(r["scaled"] for r in outcomes)
        else None,
        "limits": wording.limits(results),
        "registration": results.get("registration"),
        "deviations": results.get("deviations", []),
        "context_events": results.get("context", []),
        "chain": chain_view(results, learning),
        "glossary": GLOSSARY,
        "threshold": counts.threshold,
    }


def technical_context(
    results: Mapping[str, Any],
    learning: Mapping[str, Any] | None = None,
    exact_counts: bool = False,
) -> dict[str, Any]:
    """The summary's content plus every table an analyst needs to check the numbers."""
    counts = shown(results, exact=exact_counts)
    ctx = summary_context(results, learning, counts)
    ctx["exact_counts"] = exact_counts
    outcomes = [results["primary"], *results.get("secondary", [])]
    ctx["all_outcomes"] = outcomes
    ri = results["primary"].get("randomisation_inference") or {}
    hist = ri.get("null_histogram")
    ctx["ri_svg"] = (
        charts.null_distribution(hist["edges"], hist["counts"], ri["observed"], "Estimated effect")
        if hist
        else None
    )
    ctx["protocol_json"] = (
        json.dumps(results["protocol"], indent=2, ensure_ascii=False)
        if results.get("protocol")
        else None
    )
    ctx["mdes"] = evidence.minimum_detectable_sd(results["primary"], results["alpha"])
    # named by the outcomes that were adjusted: one that could not be estimated (a survey
    # never returned) has no adjusted p-value and no method
    ctx["multiplicity"] = next(
        (o["multiplicity"] for o in results.get("secondary", []) if o.get("multiplicity")),
        None,
    )
    ctx.update(withheld(results, counts))
    cace = results["primary"].get("cace") or {}
    ctx["cace_reason"] = _no_count(cace.get("not_estimable"))
    return ctx


def _no_count(reason: str | None) -> str | None:
    """A count of people has no place in a printed reason (it is not disclosure-
    controlled): older results.json files said how many had no receipt recorded."""
    if reason is None:
        return None
    return re.sub(
        r"receipt is not recorded for \d+ people in the (\S+) arm",
        r"receipt (started or did not start) is not recorded for everyone analysed in the \1 arm",
        reason,
    )


def withheld(results: Mapping[str, Any], counts: Shown) -> dict[str, Any]:
    """What the technical report must not print because a small count could be worked
    back from it: an outcome's unadjusted rates and the measures built on them (a rate
    times the number analysed gives the events) and the standard errors of its
    standardised effect (they give the numbers analysed in each arm), the people with a
    baseline category in an arm (a proportion times the arm's size), the share observed
    when the few lost are hidden, the compliance rate when the few who did not start are
    hidden, attrition
    percentages when a box they rest on is hidden, the size of the allocation log and of
    each outcome file when a CONSORT box is hidden, total costs when the number offered
    the new support is hidden, and the effect rows of subgroup levels with few people
    (their degrees of freedom give the number away)."""
    outcomes = [results["primary"], *results.get("secondary", [])]
    small_outcomes = {o["outcome"] for o in outcomes if rates_hidden(results, o["outcome"], counts)}
    small_balance = set()
    if not counts.exact:
        for i, b in enumerate(results.get("balance", [])):
            if b["kind"] == "numeric":
                continue
            for mean, n in (
                (b["mean_treated"], b["n_treated"]),
                (b["mean_control"], b["n_control"]),
            ):
                if mean is None:  # nobody in this arm has the variable recorded
                    continue
                k = round(mean * n)
                if 0 < k < counts.threshold or 0 < n - k < counts.threshold:
                    small_balance.add(i)
    return {
        "small_outcomes": small_outcomes,
        "small_balance": small_balance,
        "lost_hidden": lost_hidden(results, counts),
        "starts_hidden": starts_hidden(results, counts),
        "attrition_hidden": attrition_hidden(results, counts),
        "flow_hidden": flow_hidden(counts),
        "cost_totals_hidden": cost_totals_hidden(results, counts),
        "small_subgroups": {
            (s["subgroup"], lv["level"])
            for s in results["primary"].get("subgroups") or []
            for lv in s["levels"]
            if subgroup_hidden(results["primary"]["outcome"], s["subgroup"], lv["level"], counts)
        },
    }


def chain_view(
    results: Mapping[str, Any], learning: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The test-learn-adapt chain this pilot belongs to, in words, from learning.json.
    Each iteration's number of people is shown as "fewer than N" under the threshold."""
    threshold = _threshold(results)
    earlier = (results.get("protocol") or {}).get("iteration_of")
    if not learning:
        return {"earlier": earlier, "learning": None} if earlier else None
    outcome = {**learning["outcome"], "minimal_important_difference": learning["outcome"]["mid"]}
    rows = []
    for it in learning["chain"]:
        rows.append(
            {
                "pilot": it["pilot"],
                "title": it["title"],
                "this": it["pilot"] == results["pilot"]["id"],
                "estimate": wording.amount(outcome, it["estimate"]),
                "interval": f"{wording.amount(outcome, it['conf_low'])} to "
                f"{wording.amount(outcome, it['conf_high'])}",
                "n": f"{it['n']:,}" if not 0 < it["n"] < threshold else f"fewer than {threshold}",
                "changes": [
                    f"{c['path']}: {c.get('old')} → {c.get('new')}"
                    for c in it.get("changes_from_previous") or []
                    if c["path"] != "start_date"
                ],
            }
        )
    fixed = learning["fixed"]
    steps = learning["bayes"]["steps"]
    return {
        "earlier": earlier,
        "learning": learning,
        "rows": rows,
        "pooled": f"{wording.amount(outcome, fixed['estimate'])} (95% interval "
        f"{wording.amount(outcome, fixed['conf_low'])} to "
        f"{wording.amount(outcome, fixed['conf_high'])})",
        "reading": steps[-1]["words"] if steps else None,
        "next": learning["next_iteration"]["statement"],
    }


def _threshold(results: Mapping[str, Any]) -> int:
    return int(
        ((results.get("protocol") or {}).get("reporting") or {}).get("suppression_threshold", 10)
    )


def headline_line(results: Mapping[str, Any]) -> str:
    return wording.headline(results, shown(results))["answer"]


def index_context(pilots: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pilots grouped into chains of iterations (first iteration first)."""
    by_id = {p["id"]: p for p in pilots}

    def root(p: Mapping[str, Any]) -> str:
        seen = set()
        while p.get("iteration_of") in by_id and p["id"] not in seen:
            seen.add(p["id"])
            p = by_id[p["iteration_of"]]
        return p["id"]

    groups: dict[str, list[Mapping[str, Any]]] = {}
    for p in sorted(pilots, key=lambda p: p["id"]):
        groups.setdefault(root(p), []).append(p)
    chains = []
    for members in groups.values():
        ordered: list[Mapping[str, Any]] = []
        frontier = [m for m in members if m.get("iteration_of") not in by_id]
        while frontier:
            ordered += frontier
            ids = {m["id"] for m in frontier}
            frontier = [m for m in members if m.get("iteration_of") in ids]
        chains.append(ordered)
    return {"chains": chains}


# --- files ---------------------------------------------------------------------------


def load_results(analyses: Path, pilot: str) -> dict[str, Any]:
    path = analyses / pilot / "results.json"
    if not path.exists():
        raise UserError(
            f"{path} does not exist",
            f"run the registered analysis first: evalkit analyse {pilot}",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    from evalkit.results import check_results

    try:
        check_results(data)
    except ValueError as e:
        raise UserError(
            f"{path} is not a results file evalkit can report on: {e}",
            f"run evalkit analyse {pilot} again",
        ) from None
    return data


def load_learning(analyses: Path, pilot: str) -> dict[str, Any] | None:
    """The learning.json of the longest chain that includes ``pilot`` (it is written
    beside the chain's latest iteration), or None."""
    found = []
    for path in sorted(analyses.glob("*/learning.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})",
                f"run evalkit learn {path.parent.name} again",
            ) from None
        if any(it.get("pilot") == pilot for it in doc.get("chain", [])):
            found.append(doc)
    return max(found, key=lambda d: len(d["chain"])) if found else None


def write_reports(
    analyses: Path,
    pilot: str,
    templates: Path | None = None,
    exact_counts: bool = False,
) -> list[Path]:
    """Write summary.html and technical.html for one pilot, then refresh the index."""
    results = load_results(analyses, pilot)
    learning = load_learning(analyses, pilot)
    pages = render_pages(environment(templates), results, learning, exact_counts)
    written = []
    for name, html in pages.items():
        path = analyses / pilot / name
        write_atomically(path, html)
        written.append(path)
    written.append(write_index(analyses, templates))
    return written


def render_pages(
    env: jinja2.Environment,
    results: Mapping[str, Any],
    learning: Mapping[str, Any] | None,
    exact_counts: bool = False,
) -> dict[str, str]:
    """One pilot's summary.html and technical.html, as text."""
    return {
        "summary.html": env.get_template("summary.html.j2").render(
            **summary_context(results, learning)
        ),
        "technical.html": env.get_template("technical.html.j2").render(
            **technical_context(results, learning, exact_counts)
        ),
    }


def render_index(
    env: jinja2.Environment, entries: Sequence[Mapping[str, Any]], published: bool = False
) -> str:
    """index.html: the analyses folder's (for the evaluator), or a published folder's."""
    return env.get_template("index.html.j2").render(**index_context(entries), published=published)


def pilot_entry(analyses: Path, folder: Path) -> dict[str, Any] | None:
    path = folder / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text(encoding="utf-8"))
    return index_entry(
        results, (folder / "summary.html").exists(), (folder / "technical.html").exists()
    )


def index_entry(
    results: Mapping[str, Any], summary: bool, technical: bool, results_file: str | None = None
) -> dict[str, Any]:
    """One pilot's row of the index (``results_file``: a published results file to link)."""
    rating = evidence.rate(results)
    return {
        "id": results["pilot"]["id"],
        "title": results["pilot"]["title"],
        "iteration_of": (results.get("protocol") or {}).get("iteration_of"),
        "as_of": results["as_of"],
        "exploratory": results["exploratory"],
        "headline": headline_line(results),
        "padlocks": rating["padlocks"],
        "rating_words": rating["words"],
        "summary": summary,
        "technical": technical,
        "results_file": results_file,
        "synthetic": is_synthetic(results),
    }


def write_index(analyses: Path, templates: Path | None = None) -> Path:
    """analyses/index.html: every analysed pilot, chains of iterations together."""
    pilots = [
        e
        for folder in sorted(p for p in analyses.iterdir() if p.is_dir())
        if (e := pilot_entry(analyses, folder)) is not None
    ]
    html = render_index(environment(templates), pilots)
    path = analyses / "index.html"
    write_atomically(path, html)
    return path


def analysed_pilots(analyses: Path) -> list[str]:
    """Pilots with a results.json, in name order."""
    if not analyses.is_dir():
        return []
    return sorted(p.name for p in analyses.iterdir() if (p / "results.json").exists())


def print_pdf(html: Path) -> Path:
    """Print a report to PDF with a local Chromium (offline: the page needs nothing else)."""
    browser = next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser is None:
        raise UserError(
            "--pdf needs Chromium, which is not installed",
            "install it (Debian: apt-get install chromium) or print the HTML from a browser",
        )
    out = html.with_suffix(".pdf")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--no-pdf-header-footer",
                f"--print-to-pdf={out}",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    if done.returncode != 0 or not out.exists():
        raise UserError(f"Chromium could not print {html} to PDF: {done.stderr.strip()[-300:]}")
    return out
