"""Every report in a real headless browser, with the network off: it loads without
console errors, asks no other host for anything, renders on a desktop, a phone and in
print, and axe-core finds no serious or critical accessibility violation (WCAG 2.2 AA).

Needs Debian's Chromium, the Python playwright package (test extras) and axe-core from
npm. Without them these tests skip with the reason; .ci/run installs them and sets
EVALKIT_REQUIRE_BROWSER=1, which turns a skip into a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not _chromium():
        return "Chromium is not installed (Debian: apt-get install chromium)"
    if not _axe().exists():
        return f"axe-core is not installed at {_axe()} (npm install --prefix .ci/node axe-core)"
    return None


def _chromium() -> str | None:
    return os.environ.get("EVALKIT_CHROMIUM") or shutil.which("chromium")


def _axe() -> Path:
    return Path(
        os.environ.get("EVALKIT_AXE_JS")
        or REPO / ".ci" / "node" / "node_modules" / "axe-core" / "axe.min.js"
    )


@pytest.fixture(scope="module")
def browser():
    reason = _missing()
    if reason:
        if os.environ.get("EVALKIT_REQUIRE_BROWSER"):
            pytest.fail(f"browser tests are required here but cannot run: {reason}")
        pytest.skip(f"browser tests skipped: {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        yield b
        b.close()


PAGES = [
    f"{pilot}/{name}"
    for pilot in ("demo-keyworker", "demo-estates", "demo-front-door", "demo-keyworker-2")
    for name in ("summary.html", "technical.html")
] + ["index.html"]


@pytest.mark.parametrize("page_path", PAGES)
def test_report_in_a_real_browser(browser, demo_reports, tmp_path, page_path):
    file = demo_reports / "analyses" / page_path
    context = browser.new_context(offline=True, viewport={"width": 1100, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    requests: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(file.as_uri(), wait_until="load")

    assert problems == []
    assert [u for u in requests if u != file.as_uri()] == []  # no other file, no other host
    assert page.title()
    shot = tmp_path / "desktop.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000

    # a phone: nothing wider than the screen except the tables that scroll on purpose
    page.set_viewport_size({"width": 375, "height": 800})
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)

    # print: the print stylesheet applies (the masthead loses its dark background)
    page.emulate_media(media="print")
    background = page.evaluate(
        "() => getComputedStyle(document.querySelector('header.masthead')).backgroundColor"
    )
    assert background in {"rgba(0, 0, 0, 0)", "transparent"}
    page.emulate_media(media="screen")
    page.set_viewport_size({"width": 1100, "height": 900})

    page.add_script_tag(path=str(_axe()))
    violations = page.evaluate(
        "async (tags) => (await axe.run(document, {runOnly: {type: 'tag', values: tags}}))"
        ".violations.map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.length,"
        " first: v.nodes[0].html.slice(0, 200)}))",
        AXE_TAGS,
    )
    serious = [v for v in violations if v["impact"] in {"serious", "critical"}]
    assert serious == [], serious
    assert [u for u in requests if u != file.as_uri()] == []
    context.close()


def test_pdf_is_printed_offline_by_chromium(browser, demo_reports, tmp_path):
    import shutil as sh

    from click.testing import CliRunner

    from cli import cli

    ws = tmp_path / "copy"
    sh.copytree(demo_reports, ws)
    res = CliRunner().invoke(
        cli, ["--workspace", str(ws), "report", "demo-estates", "--pdf"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    for name in ("summary.pdf", "technical.pdf"):
        pdf = ws / "analyses" / "demo-estates" / name
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 20_000
        assert f"wrote {pdf}" in res.output
