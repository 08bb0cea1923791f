"""User-facing errors: one line, naming the problem, printed by the CLI with a non-zero exit."""


class AttnRewriteError(Exception):
    """Bad input or options (missing file, corrupt model, unknown method, ...)."""


class VerificationError(AttnRewriteError):
    """The rewritten model does not reproduce the original within tolerance."""
