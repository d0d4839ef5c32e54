"""A pydantic base for routing values: positional arguments and gradguard errors."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from gradguard.errors import GradguardError

__all__ = ["RoutingModel", "convert_validation_error"]


def convert_validation_error(
    exc: ValidationError, model: str, error_cls: type[GradguardError]
) -> GradguardError:
    """Turn pydantic's ``ValidationError`` into a gradguard error.

    An error raised by one of our own validators (already a gradguard error whose
    message names the bad value and the fix) is returned as is; anything else
    (a wrong type, a missing or unknown field) becomes ``error_cls`` with
    pydantic's description of each bad field and the value it got.
    """
    parts: list[str] = []
    for err in exc.errors():
        original = (err.get("ctx") or {}).get("error")
        if isinstance(original, GradguardError):
            return original
        loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
        if err.get("type") == "missing":
            parts.append(f"{loc} is required")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"{loc}={err.get('input')!r} is not a field of {model}; remove it")
        else:
            parts.append(f"{loc}={err.get('input')!r}: {err.get('msg')}")
    return error_cls(f"invalid {model}: " + "; ".join(parts))


class RoutingModel(BaseModel):
    """Base of the routing values: accepts the fields listed in ``_positional``
    positionally, and raises ``_error`` (a gradguard error) instead of pydantic's
    ``ValidationError``."""

    _positional: ClassVar[tuple[str, ...]] = ()
    _error: ClassVar[type[GradguardError]] = GradguardError

    def __init__(self, *args: Any, **data: Any) -> None:
        cls = type(self)
        if len(args) > len(cls._positional):
            raise cls._error(
                f"{cls.__name__} takes at most {len(cls._positional)} positional arguments "
                f"({', '.join(cls._positional) or 'none'}), got {len(args)}; pass the rest by keyword"
            )
        for name, value in zip(cls._positional, args, strict=False):
            if name in data:
                raise cls._error(f"{cls.__name__} got {name!r} both positionally and by keyword; pass it once")
            data[name] = value
        try:
            super().__init__(**data)
        except ValidationError as exc:
            # Our messages already name the bad value; pydantic's chained trace adds nothing.
            raise convert_validation_error(exc, cls.__name__, cls._error) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        """Like pydantic's, raising ``_error`` instead of ``ValidationError``."""
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise convert_validation_error(exc, cls.__name__, cls._error) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Any:
        """Like pydantic's, raising ``_error`` instead of ``ValidationError``."""
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as exc:
            raise convert_validation_error(exc, cls.__name__, cls._error) from None
