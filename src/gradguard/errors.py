"""Every error gradguard raises derives from :class:`GradguardError`."""

from __future__ import annotations

__all__ = [
    "GradguardError",
    "ModelSourceError",
    "EmbeddedModelError",
    "ChatTemplateError",
    "UnsupportedModelError",
    "UnknownOffsetError",
    "InputError",
    "ContextLengthError",
    "MissingExtraError",
    "GenerationCancelled",
    "QueueFullError",
]


class GradguardError(Exception):
    """Base class of every error raised by gradguard."""


class ModelSourceError(GradguardError):
    """A model source (id, folder or ``.gguf`` path) could not be loaded."""


class EmbeddedModelError(ModelSourceError):
    """The embedded default model is missing, corrupt, or its cache is unreadable."""


class ChatTemplateError(GradguardError):
    """The tokenizer has no chat template, or the template cannot render the messages."""


class UnsupportedModelError(GradguardError):
    """The model is not a causal language model that gradguard can score."""


class UnknownOffsetError(GradguardError):
    """No semantic-preserving offset is known for this model."""


class InputError(GradguardError, ValueError):
    """The messages or response given to the scorer are not usable."""


class ContextLengthError(InputError):
    """Prompt plus response exceed the model's context window (nothing is truncated)."""


class MissingExtraError(GradguardError, ImportError):
    """An optional dependency is missing; the message names it and the ``pip install 'gradguard[...]'`` that adds it.

    ``package`` is the missing distribution (e.g. ``scikit-learn``), ``extra`` the gradguard extra that
    installs it (e.g. ``calibrate``); ``name`` (as for any ImportError) is the module that failed to import.
    """

    def __init__(self, message: str, *, package: str, extra: str, name: str | None = None) -> None:
        super().__init__(message, name=name)
        self.package = package
        self.extra = extra


class GenerationCancelled(GradguardError):
    """Generation was cancelled (the ``cancel`` event was set), so nothing was scored and the model is free."""


class QueueFullError(GradguardError):
    """Too many requests are already waiting for the model; try again after ``retry_after`` seconds (an estimate)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = float(retry_after)

    def __reduce__(self) -> tuple[type[QueueFullError], tuple[str, float]]:  # keep retry_after across pickling
        return (type(self), (str(self), self.retry_after))
