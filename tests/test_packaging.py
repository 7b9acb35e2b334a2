"""Installed from a wheel (not this checkout), evalkit still finds its report templates,
protocol templates and results schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
from pathlib import Path
import evalkit, evalkit.report, evalkit.results, evalkit.templates
print(evalkit.__file__)
dirs = evalkit.report.template_dirs()
assert any((Path(d) / "summary.html.j2").is_file() for d in dirs), dirs
assert all(not d.startswith(str(Path(%r))) for d in dirs), dirs
env = evalkit.report.environment()
for name in ("summary.html.j2", "technical.html.j2", "index.html.j2", "style.css"):
    env.get_template(name)
assert evalkit.results.schema()["$schema"].startswith("https://json-schema.org/")
assert "id: hackney-keyworker" in evalkit.templates.template_text("hackney-keyworker.yaml")
print("ok")
"""


def test_a_wheel_carries_every_template_and_the_schema(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    target = tmp_path / "site"
    wheel = next(wheels.glob("evalkit-*.whl"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE % str(REPO)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[0].startswith(str(target)) and lines[-1] == "ok"
