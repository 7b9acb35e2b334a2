"""Charts for the reports as inline SVG: the CONSORT flow, the forest plot and the
randomisation-inference null distribution.

Text stays text (svg.fonttype none) so it is searchable, selectable and read by screen
readers, and fonts come from the reader's system. Each chart is labelled for assistive
technology (role="img" with a title and a description); the numbers it shows are also in a
table next to it. Output is deterministic: the same input gives the same bytes.
"""

from __future__ import annotations

import io
import itertools
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import MaxNLocator

INK = "#0b0c0c"
BLUE = "#1d70b8"
GREY = "#505a5f"
LIGHT = "#f3f2f1"
STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "evalkit",
    "font.family": "sans-serif",
    "font.size": 10,
    "axes.edgecolor": GREY,
    "axes.labelcolor": INK,
    "xtick.color": INK,
    "ytick.color": INK,
    "text.color": INK,
}


def _svg(fig: Figure, chart_id: str, title: str, description: str) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(
        r"font-family: ?[^;\"']*(?=[;\"'])", "font-family: system-ui, Arial, sans-serif", text
    )
    text = re.sub(r"font: ([\d.]+px) '[^']*'", r"font: \1 system-ui, Arial, sans-serif", text)
    text = re.sub(
        r'<svg ([^>]*?)width="[\d.]+pt" height="[\d.]+pt"',
        r'<svg \1width="100%"',
        text,
        count=1,
    )
    head = f'<svg role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" focusable="false" '
    text = text.replace("<svg ", head, 1)
    close = text.index(">", text.index("<svg")) + 1
    labels = (
        f'<title id="{chart_id}-title">{escape(title)}</title>'
        f'<desc id="{chart_id}-desc">{escape(description)}</desc>'
    )
    return text[:close] + labels + text[close:]


def _figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(STYLE):
        return Figure(figsize=(width, height))


@dataclass(frozen=True)
class FlowArm:
    label: str
    allocated: str
    withdrawn: str
    did_not_start: str
    lost: str
    not_yet_due: str
    analysed: str


def consort(
    assessed: str,
    excluded: str,
    reasons: Sequence[tuple[str, str]],
    randomised: str,
    arms: Sequence[FlowArm],
    places: str | None,
) -> str:
    """The CONSORT flow diagram; every count arrives already disclosure-controlled."""
    with matplotlib.rc_context(STYLE):
        fig = _figure(7.2, 5.6)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.axis("off")

        def box(x: float, y: float, w: float, h: float, text: str, fill: str = "white") -> None:
            ax.add_patch(
                FancyBboxPatch(
                    (x - w / 2, y - h / 2),
                    w,
                    h,
                    boxstyle="square,pad=0",
                    facecolor=fill,
                    edgecolor=INK,
                    linewidth=1,
                )
            )
            ax.text(x, y, text, ha="center", va="center", fontsize=8.5, wrap=False)

        def arrow(x1: float, y1: float, x2: float, y2: float) -> None:
            ax.annotate(
                "",
                xy=(x2, y2),
                xytext=(x1, y1),
                arrowprops={"arrowstyle": "-|>", "color": INK, "linewidth": 1},
            )

        box(32, 93, 40, 8, f"Assessed for eligibility\n{assessed}", LIGHT)
        reason_text = "\n".join(
            "\n".join(textwrap.wrap(f"{why}: {n}", 44)) for why, n in reasons[:4]
        )
        if len(reasons) > 4:
            reason_text += f"\n(and {len(reasons) - 4} more reasons)"
        lines = 1 + reason_text.count("\n") + bool(reason_text)
        box(
            78,
            83,
            42,
            max(10, 3.2 * lines + 3),
            f"Not eligible: {excluded}" + (f"\n{reason_text}" if reason_text else ""),
        )
        arrow(32, 89, 32, 77.5)
        ax.plot([32, 57], [83, 83], color=INK, linewidth=1)
        people = (
            randomised if randomised in ("withheld", "not published") else f"{randomised} people"
        )
        rand = f"Randomised\n{people}" + (f" in {places} places" if places else "")
        box(32, 73, 40, 8, rand, LIGHT)
        xs = [25, 75] if len(arms) == 2 else [100 * (i + 0.5) / len(arms) for i in range(len(arms))]
        width = min(44, 92 / max(len(arms), 1))
        for x, arm in zip(xs, arms, strict=True):
            arrow(32, 69, x, 60.5)
            box(x, 55, width, 10, f"{arm.label}\nallocated: {arm.allocated}")
            arrow(x, 50, x, 43.5)
            box(
                x,
                36,
                width,
                14,
                f"Withdrew: {arm.withdrawn}\nDid not start: {arm.did_not_start}\n"
                f"No outcome recorded: {arm.lost}\nNot yet due: {arm.not_yet_due}",
            )
            arrow(x, 29, x, 18.5)
            box(x, 13, width, 10, f"Analysed for the\nprimary outcome: {arm.analysed}", LIGHT)
        description = (
            f"Assessed {assessed}; not eligible {excluded}; randomised {randomised}. "
            + " ".join(
                f"{a.label}: allocated {a.allocated}, withdrew {a.withdrawn}, did not start "
                f"{a.did_not_start}, no outcome {a.lost}, not yet due {a.not_yet_due}, "
                f"analysed {a.analysed}."
                for a in arms
            )
        )
        return _svg(fig, "consort", "Flow of people through the pilot", description)


@dataclass(frozen=True)
class ForestRow:
    label: str
    estimate: float
    low: float
    high: float
    primary: bool


def forest(rows: Sequence[ForestRow], chart_id: str = "forest") -> str:
    """Effects as multiples of each outcome's smallest difference that matters, turned so
    that right is better: one scale for outcomes measured in different units."""
    with matplotlib.rc_context(STYLE):
        height = 1.1 + 0.55 * len(rows)
        fig = _figure(7.2, height)
        ax = fig.add_axes((0.42, 0.9 / height, 0.55, 1 - 1.35 / height))
        ys = list(range(len(rows)))[::-1]
        for y, r in zip(ys, rows, strict=True):
            colour = BLUE if r.primary else INK
            ax.plot([r.low, r.high], [y, y], color=colour, linewidth=2)
            ax.plot(
                [r.estimate],
                [y],
                marker="D" if r.primary else "o",
                color=colour,
                markersize=7,
            )
        lo = min([r.low for r in rows] + [-1.0])
        hi = max([r.high for r in rows] + [1.5])
        pad = 0.05 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.axvline(0, color=INK, linewidth=1)
        ax.axvline(1, color=GREY, linewidth=1, linestyle="--")
        ax.set_yticks(ys)
        ax.set_yticklabels([("Primary: " if r.primary else "") + r.label for r in rows])
        ax.set_xlabel(
            "Difference as a multiple of the smallest difference that matters\n"
            "(0 = no difference; dashed line = smallest that matters; right = better)"
        )
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        description = " ".join(
            f"{r.label}: {r.estimate:.2f} (95% interval {r.low:.2f} to {r.high:.2f})." for r in rows
        )
        return _svg(fig, chart_id, "Effects on each outcome, with 95% intervals", description)


def null_distribution(
    edges: Sequence[float], counts: Sequence[int], observed: float, label: str
) -> str:
    """The randomisation-inference null distribution with the observed estimate marked."""
    with matplotlib.rc_context(STYLE):
        fig = _figure(7.2, 3.0)
        ax = fig.add_axes((0.1, 0.2, 0.85, 0.72))
        widths = [b - a for a, b in itertools.pairwise(edges)]
        ax.bar(edges[:-1], counts, width=widths, align="edge", color=LIGHT, edgecolor=GREY)
        ax.axvline(observed, color=BLUE, linewidth=2)
        ax.axvline(-observed, color=BLUE, linewidth=1, linestyle="--")
        ax.set_xlabel(f"{label} under re-drawn assignments (solid line: the one observed)")
        ax.set_ylabel("Re-draws")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        description = (
            f"Histogram of {sum(counts)} re-drawn estimates from {edges[0]:.3f} to "
            f"{edges[-1]:.3f}; observed estimate {observed:.3f}."
        )
        return _svg(fig, "ri-null", "Randomisation-inference null distribution", description)
