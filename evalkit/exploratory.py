"""One effect from a data file, outside any registered plan: what `evalkit estimate`
prints. Everything it produces is labelled exploratory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalkit.errors import UserError
from evalkit.estimators import design_matrix, estimate_effect
from evalkit.inference import (
    complete_within_blocks_chunks,
    randomisation_test,
    wild_cluster_bootstrap,
)

NOTE = "exploratory: not a registered analysis"
COMPARISON_COLUMN = "comparison_arm"  # written by `export --what analysis` (unblinded)


def comparison(
    data: pd.DataFrame, treatment: str, arms: Sequence[str] | None
) -> tuple[list[str] | None, str]:
    """The arms to compare (comparison first) and where that order comes from.

    The order decides the sign of the effect, so it is never taken from the alphabet:
    from ``arms`` when given; else from the file's comparison_arm column (written by
    ``evalkit export``) when it names one of the treatment's two levels; a 0/1 or
    true/false treatment needs none. Any other two-level treatment is refused."""
    if arms is not None:
        return list(arms), "--arms"
    if treatment not in data.columns:
        return None, ""  # the estimator names the missing column
    s = data[treatment].dropna()
    if pd.api.types.is_bool_dtype(s.dtype) or (
        pd.api.types.is_numeric_dtype(s.dtype) and set(pd.unique(s)) <= {0, 1}
    ):
        return None, "0/1 treatment"
    levels = sorted({str(v) for v in s})
    if len(levels) != 2:
        return None, ""  # the estimator says why one or three arms cannot be compared
    if COMPARISON_COLUMN in data.columns:
        marked = {str(v) for v in data[COMPARISON_COLUMN].dropna()}
        if len(marked) == 1 and marked <= set(levels):
            first = marked.pop()
            return [first, *(x for x in levels if x != first)], (
                f"the file's {COMPARISON_COLUMN} column"
            )
    a, b = levels
    raise UserError(
        f"--treatment {treatment} has two arms, {a} and {b}, and the file does not say "
        "which is the comparison",
        f"give --arms COMPARISON,TREATED, e.g. --arms {b},{a} or --arms {a},{b} "
        "(a file from 'evalkit export --what analysis' says it itself)",
    )


def read_data(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path} does not exist", "check the file name")
    try:
        if path.suffix.lower() in {".xlsx", ".xlsm"}:
            return pd.read_excel(path)
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
    except Exception as exc:  # pandas raises many kinds for unreadable files
        raise UserError(f"{path} cannot be read: {exc}") from None
    raise UserError(f"{path}: evalkit reads .csv and .xlsx files")


def estimate(
    data: pd.DataFrame,
    outcome: str,
    treatment: str,
    covariates: Sequence[str] = (),
    cluster: str | None = None,
    blocks: str | None = None,
    se: str = "auto",
    alpha: float = 0.05,
    arms: Sequence[str] | None = None,
    ri_draws: int = 0,
    ri_statistic: str = "estimate",
    wcb_draws: int = 0,
    seed: int = 1,
) -> dict[str, Any]:
    """The effect with its registered-style inference, plus randomisation inference
    (complete randomisation within blocks, at cluster level) and the wild cluster
    bootstrap when asked for. It says which arm is treated and which is the comparison
    (see :func:`comparison`)."""
    arms, source = comparison(data, treatment, arms)
    try:
        eff = estimate_effect(
            data, outcome, treatment, list(covariates), cluster, blocks, se, alpha, arms
        )
        out: dict[str, Any] = {
            **eff.as_dict(),
            "treated": eff.treated if eff.treated is not None else "1",
            "compared_with": eff.control if eff.control is not None else "0",
            "comparison_from": source,
            "alpha": alpha,
            "note": NOTE,
            "exploratory": True,
        }
        if not (ri_draws or wcb_draws):
            return out
        d = design_matrix(data, outcome, treatment, list(covariates), cluster, blocks, arms)
        rng = np.random.default_rng(seed)
        out["seed"] = seed
        t = d.X[:, 1]
        if ri_draws:
            blocks_arr = None if d.blocks is None else d.blocks.to_numpy()
            assignments, exact = complete_within_blocks_chunks(
                t, blocks_arr, d.clusters, ri_draws, rng
            )
            rt = randomisation_test(
                d.y, np.delete(d.X, 1, axis=1), t, assignments, ri_statistic, exact, d.clusters
            )
            out.update(
                ri_p_value=rt.p_value,
                ri_draws=rt.draws,
                ri_exact=rt.exact,
                ri_statistic=rt.statistic,
            )
        if wcb_draws:
            if d.clusters is None:
                raise ValueError("the wild cluster bootstrap needs --cluster")
            wb = wild_cluster_bootstrap(d.y, d.X, d.clusters, 1, wcb_draws, rng=rng, alpha=alpha)
            out.update(
                wcb_p_value=wb.p_value,
                wcb_conf_low=wb.conf_low,
                wcb_conf_high=wb.conf_high,
                wcb_draws=wb.draws,
                wcb_weights=wb.weights,
            )
        return out
    except ValueError as exc:
        raise UserError(
            str(exc),
            "check the columns named with --outcome, --treatment, --covariates and "
            "--cluster (a two-arm comparison at a time: --arms COMPARISON,TREATED)",
        ) from None
