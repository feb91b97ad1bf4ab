"""User-facing errors: one line that names the file or option and says what to do.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class AuditorError(Exception):
    """A problem with the user's input (model spec, images, options), not a bug in auditor."""


class TechniqueClashError(AuditorError):
    """Two techniques registered under one name."""
