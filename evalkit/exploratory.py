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
    bootstrap when asked for."""
    try:
        eff = estimate_effect(
            data, outcome, treatment, list(covariates), cluster, blocks, se, alpha, arms
        )
        out: dict[str, Any] = {**eff.as_dict(), "alpha": alpha, "note": NOTE, "exploratory": True}
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
        raise UserError(str(exc)) from None
