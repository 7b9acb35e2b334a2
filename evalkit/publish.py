"""`evalkit publish DIR`: the folder to put on a website.

The workspace's analyses/ folder is the evaluator's: beside the reports it holds each
pilot's results.json and learning.json, with the exact counts the reports suppress. A
published folder holds only what may be read by anyone:

    DIR/index.html                       the pilots, chains of iterations together
    DIR/PILOT/summary.html               the scrutiny summary
    DIR/PILOT/technical.html             the technical report
    DIR/PILOT/results.published.json     what the two pages show, as data

The pages are rendered afresh from results.json by the code `evalkit report` uses, with
disclosure control on (never copied from analyses/, where a technical report written with
--exact-counts may lie). The results file is built from the very page content the
technical report renders (``report.technical_context``): every count in its published form
({"value": null, "shown": "fewer than 10"}), and every figure the pages withhold withheld
the same way, so the file and the pages cannot disagree. What the pages do not show is
not in it: no events or people without an outcome, no numbers analysed per arm for a
secondary outcome, no attrition, balance shares or cost totals when the pages withhold
them, and no free text but the pages' own.

The folder is written whole or not at all: built in a temporary folder beside DIR, then
renamed into place. A DIR that a previous publish wrote is replaced; any other non-empty
folder is refused unless --force is given.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit import report
from evalkit.disclosure import Shown
from evalkit.errors import UserError

RESULTS_FILE = "results.published.json"
FORMAT = "evalkit.results.published/1"
PAGES = ("summary.html", "technical.html")


@dataclass(frozen=True)
class Published:
    folder: Path
    pilots: list[str]
    files: list[Path]
    replaced: str | None  # None, "previous publish" or "other folder" (--force)


# --- the results file ----------------------------------------------------------------


def _count(counts: Shown, name: str) -> dict[str, Any]:
    """A count as the pages print it: the number, or null with the words shown."""
    return {"value": counts.value(name), "shown": counts.count(name)}


def _pick(source: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    source = source or {}
    return {k: source[k] for k in keys if k in source}


EFFECT = ("estimate", "std_error", "df", "p_value", "conf_low", "conf_high", "se_type", "scale")
EFFECT_CLUSTERS = ("clusters",)


def _effect(e: Mapping[str, Any], n: dict[str, Any] | None) -> dict[str, Any]:
    out = _pick(e, EFFECT + EFFECT_CLUSTERS)
    if n is not None:
        out["n"] = n
    return out


def _withheld(why: str) -> dict[str, str]:
    return {"withheld": why}


def _outcome(o: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
    """One outcome as the technical report shows it."""
    counts: Shown = ctx["counts"]
    threshold = counts.threshold
    name = o["outcome"]
    hidden = name in ctx["small_outcomes"]
    n = _count(counts, f"{name}.n")
    out = _pick(
        o,
        (
            "outcome",
            "label",
            "wording",
            "type",
            "source",
            "direction",
            "minimal_important_difference",
            "model",
            "primary_analysis",
            "covariates",
            "multiplicity",
            "adjusted_p_value",
        ),
    )
    out["primary"] = bool(o.get("primary"))
    e = o.get("effect")
    out["effect"] = _effect(e, n) if e else None
    if not e:
        out["not_estimable"] = o.get("not_estimable")
    out["other_standard_errors"] = [
        _effect(x, n if e and x.get("n") == e.get("n") else None)
        for x in o.get("other_standard_errors") or []
    ]
    m = o.get("registered_model")
    if m:
        keep = ("model", "scale", "estimate", "conf_low", "conf_high", "p_value")
        keep += ("log_estimate", "log_std_error", "df", "se_type", "note", "not_estimable")
        out["registered_model"] = _pick(m, keep)
        if "n" in m and e and m["n"] == e.get("n"):
            out["registered_model"]["n"] = n
    small = f"withheld: it would give away a count under {threshold}"
    if o.get("primary"):
        out["analysed"] = {arm: _count(counts, f"{name}.{arm}.analysed") for arm in o["analysed"]}
        if o.get("means"):
            out["means"] = _withheld(small) if hidden else dict(o["means"])
    b = o.get("binary")
    if b:
        if hidden:
            out["binary"] = _withheld(small)
        else:
            keep = ("treated_rate", "control_rate", "risk_difference", "risk_difference_low")
            keep += ("risk_difference_high", "relative_risk", "relative_risk_low")
            keep += ("relative_risk_high", "odds_ratio", "odds_ratio_low", "odds_ratio_high")
            keep += ("nnt", "nnt_kind", "confidence")
            out["binary"] = _pick(b, keep)
            if o.get("odds_ratio"):
                out["binary"]["adjusted_odds_ratio"] = _pick(
                    o["odds_ratio"], ("odds_ratio", "conf_low", "conf_high")
                )
    g = o.get("hedges_g")
    if g:
        out["hedges_g"] = _pick(
            g, ("g", "sd_pooled", "j", "g_total", "icc", "icc_source", "g_within")
        )
        for se in ("se", "se_total", "se_within"):
            if se in g:
                out["hedges_g"][se] = small if hidden else g[se]
    by = o.get("bayes")
    if by:
        out["bayes"] = _pick(
            by,
            (
                "prior",
                "posterior_mean",
                "posterior_sd",
                "credible_low",
                "credible_high",
                "credible_level",
                "p_benefit",
                "p_beyond_mid",
                "p_harm",
                "mid",
                "words",
            ),
        )
    if o.get("primary"):
        out.update(_primary_checks(o, ctx))
    return out


def _primary_checks(p: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
    """The primary outcome's sensitivity analyses and subgroups, as the report shows them."""
    counts: Shown = ctx["counts"]
    small = f"withheld: it would give away a count under {counts.threshold}"
    out: dict[str, Any] = {}
    ri = p.get("randomisation_inference")
    if ri:
        out["randomisation_inference"] = _pick(
            ri, ("design", "statistic", "p_value", "observed", "draws", "exact", "null_quantiles")
        )
    w = p.get("wild_cluster_bootstrap")
    if w:
        out["wild_cluster_bootstrap"] = _pick(
            w, ("p_value", "conf_low", "conf_high", "weights", "draws")
        )
    md = p.get("missing_data")
    if md:
        keep = ("method", "estimate", "p_value", "conf_low", "conf_high", "imputations", "df")
        out["missing_data"] = _pick(md, (*keep, "fraction_missing_information", "not_estimable"))
        if "n_observed" in md:
            hide = ctx["lost_hidden"] or ctx["attrition_hidden"]
            out["missing_data"]["observed"] = (
                small if hide else {"n_observed": md["n_observed"], "n_total": md["n_total"]}
            )
    sw = p.get("stepped_wedge_models")
    if sw:
        keep = ("estimate", "p_value", "conf_low", "conf_high", "method", "icc", "warnings")
        out["stepped_wedge_models"] = {k: _pick(v, keep) for k, v in sw.items()}
    cace = p.get("cace")
    if cace:
        if "not_estimable" in cace:
            out["cace"] = {"not_estimable": ctx["cace_reason"]}
        else:
            keep = ("estimate", "p_value", "conf_low", "conf_high", "method")
            out["cace"] = _pick(cace, keep)
            out["cace"]["compliance_rate"] = (
                small if ctx["starts_hidden"] else cace.get("compliance_rate")
            )
    groups = []
    for s in p.get("subgroups") or []:
        levels = []
        for lv in s["levels"]:
            cell = f"{p['outcome']}.subgroup.{s['subgroup']}.{lv['level']}"
            level: dict[str, Any] = {"level": lv["level"], "n": _count(counts, cell)}
            if (s["subgroup"], lv["level"]) in ctx["small_subgroups"]:
                level["effect"] = _withheld(
                    "its degrees of freedom would give the number of people away"
                )
            elif lv.get("effect"):
                level["effect"] = _effect(lv["effect"], None)
            else:
                level["effect"] = None
            levels.append(level)
        keep = ("subgroup", "interaction_p_value", "underpowered", "interaction_detectable")
        groups.append({**_pick(s, keep), "levels": levels})
    out["subgroups"] = groups
    return out


def _consort(results: Mapping[str, Any], counts: Shown) -> dict[str, Any]:
    c = results["consort"]
    return {
        "unit": c.get("unit"),
        "assessed": _count(counts, "assessed"),
        "excluded": _count(counts, "excluded"),
        "excluded_reasons": [
            {"reason": why, "people": _count(counts, f"excluded.reason.{i}")}
            for i, why in enumerate(c["excluded"]["reasons"])
        ],
        "randomised": _count(counts, "randomised"),
        "places_randomised": c.get("places_randomised"),
        "arms": [
            {
                "arm": a["arm"],
                "label": a["label"],
                "places": a.get("places"),
                **{
                    box: _count(counts, f"arm.{a['arm']}.{box}")
                    for box in (
                        "randomised",
                        "withdrawn",
                        "did_not_start",
                        "lost_to_follow_up",
                        "not_yet_due",
                        "analysed",
                    )
                },
            }
            for a in c["arms"]
        ],
    }


def _costs(results: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any] | None:
    c = results.get("costs")
    if not c or not c.get("by_agency"):
        return None
    rows = []
    for a in c["by_agency"]:
        row = _pick(a, ("agency", "cost_per_participant", "value_per_participant"))
        row["net_per_participant"] = a.get("net_per_participant")
        if ctx["cost_totals_hidden"]:
            row["totals"] = "withheld: over the cost per person they give the number offered"
        else:
            row.update(_pick(a, ("cost_total", "value_total", "net_total")))
        rows.append(row)
    per = c.get("per_additional_outcome")
    out = {
        **_pick(c, ("currency", "price_year", "per_participant")),
        "by_agency": rows,
        "in_words": ctx["costs"],
    }
    if per:
        out["per_additional_outcome"] = {
            **_pick(per, ("outcome", "point", "words")),
            "bootstrap": _pick(per.get("bootstrap"), ("draws", "conf_low", "conf_high", "reason")),
        }
    return out


def _registration(results: Mapping[str, Any]) -> dict[str, Any] | None:
    r = results.get("registration")
    if not r:
        return None
    return {
        "version": r.get("version"),
        "hash": r.get("hash"),
        "registered_at": r.get("registered_at"),
        "registered_by": r.get("registered_by"),
        "amendments": [
            {
                "version": a.get("version"),
                "at": a.get("at"),
                "reason": a.get("reason"),
                "changes": [_pick(c, ("field", "before", "after")) for c in a.get("changes", [])],
            }
            for a in r.get("amendments") or []
        ],
    }


def _provenance(results: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
    pv = results["provenance"]
    out = _pick(
        pv,
        ("protocol_hash", "registered_version", "log_head", "seed_source", "evalkit", "python"),
    )
    out["libraries"] = dict(pv.get("libraries") or {})
    hidden = "withheld: with the CONSORT boxes it would give a count away"
    out["log_entries"] = hidden if ctx["flow_hidden"] else pv.get("log_entries")
    out["data_vintage"] = [
        {
            **_pick(d, ("import", "source", "file", "as_of", "sha256")),
            "rows": hidden if ctx["flow_hidden"] else d.get("rows"),
        }
        for d in pv.get("data_vintage") or []
    ]
    return out


def _chain(ctx: Mapping[str, Any]) -> dict[str, Any] | None:
    chain = ctx["chain"]
    if not chain:
        return None
    if not chain.get("learning"):
        return {"iteration_of": chain.get("earlier")}
    return {
        "iteration_of": chain.get("earlier"),
        "iterations": [
            {
                "pilot": r["pilot"],
                "title": r["title"],
                "this": r["this"],
                "estimate": r["estimate"],
                "interval": r["interval"],
                "people": r["n"],
                "changes": r["changes"],
            }
            for r in chain["rows"]
        ],
        "pooled": chain["pooled"],
        "reading": chain["reading"],
        "next": chain["next"],
    }


def published_results(
    results: Mapping[str, Any], learning: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What one pilot's published pages show, as data: built from the technical report's
    own page content, so every count is in its published form and every figure the
    pages withhold is withheld here too."""
    ctx = report.technical_context(results, learning, exact_counts=False)
    counts: Shown = ctx["counts"]
    small = f"withheld: it would give away a count under {counts.threshold}"
    balance = []
    for i, b in enumerate(results.get("balance", [])):
        row = _pick(b, ("variable", "level", "kind", "flag"))
        if i in ctx["small_balance"]:
            row["values"] = f"withheld: fewer than {counts.threshold} people"
        else:
            row.update(_pick(b, ("mean_treated", "mean_control", "smd")))
        balance.append(row)
    at = results.get("attrition")
    attrition = None
    if at:
        attrition = (
            _withheld(small)
            if ctx["attrition_hidden"]
            else _pick(
                at,
                (
                    "overall_percent",
                    "differential_points",
                    "by_arm_percent",
                    "judgement",
                    "boundary",
                ),
            )
        )
    rating = ctx["rating"]
    return {
        "format": FORMAT,
        "about": (
            "What the published summary and technical report of this pilot show, as data. "
            f"Counts are given as {{value, shown}}: value is null when the count is under "
            f"{counts.threshold} (shown 'fewer than {counts.threshold}') or withheld so "
            "that no such count can be worked out from the others; every figure the pages "
            "withhold is withheld here. It is not results.json, which holds exact counts."
        ),
        "pilot": _pick(results["pilot"], ("id", "title", "area", "summary")),
        "synthetic": ctx["synthetic"],
        "as_of": results["as_of"],
        "exploratory": results.get("exploratory"),
        "deviations": results.get("deviations") or [],
        "design": results["design"],
        "unit": results["unit"],
        "alpha": results["alpha"],
        "estimand": results.get("estimand"),
        "arms": [_pick(a, ("name", "label", "description", "control")) for a in results["arms"]],
        "suppression_threshold": counts.threshold,
        "headline": {k: ctx["headline"][k] for k in ("tested", "finding", "answer")},
        "how_sure": ctx["how_sure"],
        "limits": ctx["limits"],
        "rating": {
            "padlocks": rating["padlocks"],
            "words": rating["words"],
            "reasons": [
                _pick(r, ("criterion", "finding", "ceiling", "deduction"))
                for r in rating["reasons"]
            ],
            "minimum_detectable_effect_sd": ctx["mdes"],
        },
        "consort": _consort(results, counts),
        "primary": _outcome(results["primary"], ctx),
        "secondary": [_outcome(o, ctx) for o in results.get("secondary", [])],
        "balance": balance,
        "attrition": attrition,
        "progression": [
            {"label": c["label"], "rating": c["rating"], "words": c["words"]}
            | {"value": c["value"], "rule": c["rule"]}
            for c in ctx["progression"]
        ],
        "costs": _costs(results, ctx),
        "context": [_pick(e, ("date", "text")) for e in results.get("context", [])],
        "not_run": [
            n if isinstance(n, str) else n.get("reason") or str(n)
            for n in results.get("not_run", [])
        ],
        "registration": _registration(results),
        "provenance": _provenance(results, ctx),
        "iterations": _chain(ctx),
        "protocol": results.get("protocol"),
    }


# --- the folder ----------------------------------------------------------------------


def build(analyses: Path, templates: Path | None = None) -> dict[str, str]:
    """Every file of the published folder, by relative path, as text. Reads only
    results.json and learning.json; refuses (naming the pilot) if any is unusable."""
    pilots = report.analysed_pilots(analyses)
    if not pilots:
        raise UserError(
            f"no pilot in {analyses} has a results.json yet",
            "run evalkit analyse PILOT first; publish writes what the reports show",
        )
    env = report.environment(templates)
    files: dict[str, str] = {}
    entries = []
    for pilot in pilots:
        try:
            results = report.load_results(analyses, pilot)
            learning = report.load_learning(analyses, pilot)
            pages = report.render_pages(env, results, learning, exact_counts=False)
            data = published_results(results, learning)
        except UserError as e:
            raise UserError(
                f"cannot publish: pilot {pilot!r} cannot be reported: {e.message}",
                e.hint or f"run evalkit analyse {pilot} again; nothing was written",
            ) from None
        for name, html in pages.items():
            files[f"{pilot}/{name}"] = html
        files[f"{pilot}/{RESULTS_FILE}"] = (
            json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        )
        entries.append(report.index_entry(results, True, True, RESULTS_FILE))
    files["index.html"] = report.render_index(env, entries, published=True)
    return files


def _made_by_publish(folder: Path) -> bool:
    """A folder every file of which is one publish writes, index.html among them."""
    files = [p.relative_to(folder) for p in folder.rglob("*") if not p.is_dir()]
    if Path("index.html") not in files:
        return False
    for f in files:
        parts = f.parts
        if parts == ("index.html",):
            continue
        if len(parts) != 2 or parts[1] not in (*PAGES, RESULTS_FILE):
            return False
    return all(p.is_dir() for p in folder.iterdir() if p.name != "index.html")


def _check_target(root: Path, out: Path, force: bool) -> str | None:
    """Refuse a target that is, or is inside, analyses/, that holds the workspace, or
    that holds other files (unless ``force``). Returns what will be replaced."""
    analyses = (root / "analyses").resolve()
    target = out.resolve()
    if target == analyses or analyses in target.parents:
        raise UserError(
            f"{out} is inside the workspace's analyses folder, which holds results.json "
            "and learning.json with exact counts",
            "publish to a folder outside analyses/, e.g. evalkit publish site",
        )
    if target == root.resolve() or target in root.resolve().parents:
        raise UserError(
            f"{out} holds the workspace itself",
            "publish to a new folder of its own, e.g. evalkit publish site",
        )
    if target == Path.home().resolve() or target == Path(target.anchor):
        raise UserError(f"{out} is not a folder to publish into", "give a new folder")
    if not target.exists():
        return None
    if not target.is_dir():
        raise UserError(f"{out} is a file, not a folder", "give a folder to publish into")
    if not any(target.iterdir()):
        return None
    if _made_by_publish(target):
        return "previous publish"
    if not force:
        raise UserError(
            f"{out} is not empty and was not written by evalkit publish",
            "give a new or empty folder, or add --force to replace it (its files are deleted)",
        )
    return "other folder"


def publish(root: Path, out: Path, templates: Path | None = None, force: bool = False) -> Published:
    """Write the published folder for every analysed pilot of the workspace at ``root``:
    whole or not at all (built beside ``out``, then renamed into place)."""
    replaced = _check_target(root, out, force)
    files = build(root / "analyses", templates)
    target = out.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.publishing-"))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(staging, 0o777 & ~umask)  # a folder anyone may read, as mkdir gives
        for rel, text in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.rmdir(old)
            os.replace(target, old)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old, target)  # put the previous folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Published(
        folder=target,
        pilots=sorted({rel.split("/")[0] for rel in files if "/" in rel}),
        files=[target / rel for rel in sorted(files)],
        replaced=replaced,
    )
