"""Wall time of the whole cycle as a user runs it: the demo (target: under 2 minutes on 2
cores), writing every report again, design diagnosis on the place template, and analytic
power. Peers (R DeclareDesign's diagnose_design, PowerUpR) are timed when R has them.

    python benchmarks/bench_cycle.py [--sims 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVALKIT = [sys.executable, str(REPO / "cli.py")]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return took, done.stdout


def r_has(package: str) -> bool:
    if not shutil.which("Rscript"):
        return False
    probe = subprocess.run(
        ["Rscript", "-e", f"quit(status = !requireNamespace('{package}', quietly = TRUE))"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=1000)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "EVALKIT_KEY_DIR": f"{tmp}/keys", "PYTHONWARNINGS": "default"}
        ws = Path(tmp) / "demo"
        took, out = timed([*EVALKIT, "demo", "--dir", str(ws)], env)
        warned = "warning" in out.lower()
        rows.append(("evalkit demo (whole cycle, 4 pilots, 9 HTML files)", took, "< 120 s"))
        took, _ = timed([*EVALKIT, "--workspace", str(ws), "report", "--all"], env)
        rows.append(("evalkit report --all (4 pilots)", took, ""))
        took, _ = timed([*EVALKIT, "power", str(REPO / "protocols" / "hackney-estates.yaml")], env)
        rows.append(("evalkit power (place template)", took, ""))
        took, out = timed(
            [
                *EVALKIT,
                "diagnose",
                str(REPO / "protocols" / "hackney-estates.yaml"),
                "--sims",
                str(args.sims),
                "--json",
            ],
            env,
        )
        rows.append((f"evalkit diagnose (place template, {args.sims} pilots, 2 workers)", took, ""))
        diag = json.loads(out)
    for peer in ("DeclareDesign", "PowerUpR"):
        rows.append((f"R {peer}", None, "installed" if r_has(peer) else "not installed here"))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  seconds  note")
    for name, secs, note in rows:
        shown = f"{secs:7.2f}" if secs is not None else "      -"
        print(f"{name.ljust(width)}  {shown}  {note}")
    print(f"demo printed a warning: {warned}")
    first = diag["scenarios"][0] if "scenarios" in diag else diag[0]
    print("diagnose, registered design:", json.dumps(first.get("estimands", first))[:400])


if __name__ == "__main__":
    main()
