"""evalkit: pre-registered randomised pilots of public services, honestly evaluated."""

__version__ = "0.1.0"
