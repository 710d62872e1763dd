"""Errors that reach the user as one clear message: what is wrong, and how to fix it.

Library code raises these instead of letting a traceback from deep inside torch, onnx or a backend
escape. The CLI prints ``str(error)`` and exits non-zero (``--debug`` shows the traceback).
"""

from __future__ import annotations


class EdgeResnetError(Exception):
    """Base class. ``problem`` says what is wrong, ``fix`` what the user can do about it."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.problem if not self.fix else f"{self.problem}\n  fix: {self.fix}"


class ModelError(EdgeResnetError):
    """Unknown model name, bad model options."""


class CheckpointError(EdgeResnetError):
    """A checkpoint that cannot be read or does not match the model."""


class GraphError(EdgeResnetError):
    """An ONNX file that is not ONNX, is truncated, or is not a graph we can handle."""


class DataError(EdgeResnetError):
    """Calibration or validation data that is missing, empty, corrupt or of the wrong shape."""


class QuantizationError(EdgeResnetError):
    """Calibration or Q/DQ insertion failed."""


class TargetError(EdgeResnetError):
    """Unknown target profile or an invalid profile file."""


class BackendError(EdgeResnetError):
    """A backend failed to build, load or run an artifact."""


class BackendUnavailable(BackendError):
    """An optional backend (openvino, tensorrt, ...) is not installed on this machine."""


class BundleError(EdgeResnetError):
    """A bundle directory that is incomplete, modified, or built for another device."""


class BudgetExceeded(EdgeResnetError):
    """Accuracy drift is above the user's budget."""

    exit_code = 3
