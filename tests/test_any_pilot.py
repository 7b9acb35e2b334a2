"""Any real pilot, start to finish: generated pilots run through the whole command line.

Each pilot comes from a seed (see tests/anypilot.py for what is generated and what is
checked after every command). ``EVALKIT_FUZZ_SEED`` (default 1) and
``EVALKIT_FUZZ_PILOTS`` (default 24) choose the pilots: pilot i has seed
``EVALKIT_FUZZ_SEED + i``, so a failure names the one seed that replays it alone with
``EVALKIT_FUZZ_SEED=<seed> EVALKIT_FUZZ_PILOTS=1``.
"""

from __future__ import annotations

import os

import pytest

from tests.anypilot import run_pilot

FIRST = int(os.environ.get("EVALKIT_FUZZ_SEED", "1"))
COUNT = int(os.environ.get("EVALKIT_FUZZ_PILOTS", "24"))


@pytest.mark.parametrize("seed", range(FIRST, FIRST + COUNT))
def test_any_pilot_keeps_every_promise(seed, tmp_path):
    run_pilot(seed, tmp_path)
