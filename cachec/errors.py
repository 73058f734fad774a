"""Errors a user can cause, each carrying a message that says what was wrong and what is accepted.

Why a small hierarchy: the CLI turns every :class:`CachecError` into a one-paragraph message and
exit code 2, while genuine bugs (anything else) keep their traceback. Raising one of these is the
promise that the message alone is enough for the user to fix their input.
"""


class CachecError(Exception):
    """Base class of all user-facing cachec errors (CLI exit code 2)."""


class PolicyError(CachecError, ValueError):
    """A policy spec that does not parse, names an unknown policy/key, or has an out-of-range value."""


class ModelError(CachecError):
    """A model that cannot be resolved, built, exported or segmented."""


class CaptureError(ModelError):
    """torch.export could not trace the model on its example inputs (which of the two is at fault, the
    caller tells: :mod:`cachec.input_check` re-words it when the inputs were synthesised)."""


class ShapeError(CachecError, ValueError):
    """Runtime inputs whose shape or dtype differ from what the program was compiled for."""


class ArtifactError(CachecError):
    """A compiled artifact that is missing, corrupt, truncated, foreign or of another version."""


class BackendError(CachecError):
    """A backend that is unknown or whose package is not installed."""


class RequestError(CachecError, ValueError):
    """A serving request the server rejects before running it (``cachec serve``: HTTP 422)."""


class ConcurrentUseError(CachecError, RuntimeError):
    """A :class:`~cachec.runtime.CacheRuntime` called from a second thread while another thread
    is inside a step or in the middle of a trajectory (its caches and policy state are one caller's)."""
