"""Named random streams derived from one seed, so any single draw can be replayed alone.

Each draw in a pilot (the order of block 7 in the ESA stratum, the coin for referral 212
under minimisation, the chosen allocation of places) gets its own
``numpy.random.Generator`` (PCG64), seeded by HMAC-SHA256 of the pilot seed and the
draw's name. A draw therefore depends only on the seed and its name, never on how many
other draws happened before it or in which process: batch and one-at-a-time enrolment
give the same sequence, and ``verify`` can replay any entry on its own.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

ALGORITHM = "PCG64"


class RngFactory:
    """``rngs("blocked/ESA/block/3")`` is the generator for that one named draw."""

    def __init__(self, seed: bytes):
        if len(seed) < 16:
            raise ValueError("a seed needs at least 16 bytes")
        self._seed = seed

    def __call__(self, name: str) -> np.random.Generator:
        digest = hmac.new(self._seed, name.encode("utf-8"), hashlib.sha256).digest()
        entropy = int.from_bytes(digest, "big")
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))

    @classmethod
    def for_test(cls, n: int) -> RngFactory:
        """A factory for tests and simulations, from a small integer."""
        return cls(hashlib.sha256(f"evalkit test seed {n}".encode()).digest())


def pilot_seed(secret: bytes, registration_hash: str) -> bytes:
    """The seed of a pilot: its secret bound to the hash of its first registration, so the
    same secret with a different protocol gives an unrelated sequence."""
    return hmac.new(secret, f"allocation/{registration_hash}".encode(), hashlib.sha256).digest()
