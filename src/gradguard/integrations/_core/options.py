"""Generation options: one record, one policy for unknown options, shared by both integrations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gradguard.integrations._core.errors import IntegrationError, UnknownOptionError

__all__ = ["GenerationOptions", "MAX_TOP_LOGPROBS", "CALL_OPTIONS"]

#: The most alternatives per token ``top_logprobs`` may ask for (OpenAI's limit).
MAX_TOP_LOGPROBS = 20


class GenerationOptions(BaseModel):
    """How one answer is generated: a component's defaults merged with per-call options.

    Decoding is greedy unless ``temperature > 0`` (or ``do_sample=True``). ``stop`` ends the
    answer before the first stop string. ``logprobs`` adds OpenAI-style log-probabilities to
    the metadata, ``top_logprobs`` the most likely alternatives per token (taken from the
    scoring pass: no extra cost). ``task`` names the calibration of the confidence.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(256, gt=0, description="Most tokens to generate.")
    temperature: float | None = Field(None, ge=0, description="Sampling temperature; None or 0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass (with temperature > 0).")
    top_k: int | None = Field(None, gt=0, description="Sample among the k most likely tokens (with sampling).")
    do_sample: bool | None = Field(None, description="Sample (True) or greedy (False); default: by temperature.")
    repetition_penalty: float | None = Field(None, gt=0, description="transformers' repetition penalty.")
    timeout: float | None = Field(None, gt=0, description="Most seconds to spend generating (transformers' max_time).")
    stop: tuple[str, ...] = Field((), description="Stop strings; the answer ends before the first one.")
    logprobs: bool = Field(False, description="Add OpenAI-style logprobs to the metadata.")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="Alternatives per token (0-20).")
    task: str | None = Field(None, description="Calibration task of the confidence (None: the profile's default).")

    def merged(self, call: Mapping[str, Any], *, owner: str, stop: Iterable[str] | None = None) -> GenerationOptions:
        """These options updated by the per-call ``call`` options (and a framework's ``stop``).

        An unknown option raises :class:`UnknownOptionError` naming the supported ones;
        ``max_tokens`` is accepted for ``max_new_tokens``; asking for ``top_logprobs``
        implies ``logprobs``. Bad values raise :class:`IntegrationError` naming them.
        """
        updates = dict(call)
        alias = "max_tokens" in updates and "max_new_tokens" not in updates
        if "max_tokens" in updates:
            updates.setdefault("max_new_tokens", updates.pop("max_tokens"))
        unknown = sorted(set(updates) - set(CALL_OPTIONS))
        if unknown:
            raise UnknownOptionError(
                f"{owner} got unsupported call options {unknown}; supported: {sorted(CALL_OPTIONS)} "
                f"(plus 'max_tokens' for max_new_tokens)"
            )
        if stop is not None:
            updates["stop"] = stop
        if "stop" in updates:
            stops = updates["stop"] or ()
            if isinstance(stops, str) or not all(isinstance(s, str) for s in stops):
                raise IntegrationError(f"{owner}: stop={stops!r} is not a list of strings; pass e.g. stop=['\\n\\n']")
            updates["stop"] = tuple(s for s in stops if s)
        if updates.get("top_logprobs"):
            updates.setdefault("logprobs", True)
        return self.checked({**self.model_dump(), **updates}, owner=owner, alias=alias)

    @classmethod
    def checked(cls, values: Mapping[str, Any], *, owner: str, alias: bool = False) -> GenerationOptions:
        """Build from ``values``, raising :class:`IntegrationError` (not pydantic's error) for bad values."""
        try:
            return cls(**values)
        except ValidationError as exc:
            parts = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
                if err.get("type") == "extra_forbidden":
                    raise UnknownOptionError(
                        f"{owner} got unsupported option {loc!r}; supported: {sorted(CALL_OPTIONS)}"
                    ) from None
                name = "max_tokens" if alias and loc == "max_new_tokens" else loc
                parts.append(f"{name}={err.get('input')!r}: {err.get('msg')}")
            raise IntegrationError(f"{owner}: " + "; ".join(parts)) from None

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for :meth:`gradguard.GradScorer.generate_and_score`."""
        sample = self.do_sample if self.do_sample is not None else bool(self.temperature)
        kwargs: dict[str, Any] = {"do_sample": sample, "stop": self.stop, "top_logprobs": self.top_logprobs or 0}
        if sample:
            for name in ("temperature", "top_p", "top_k"):
                if getattr(self, name) is not None:
                    kwargs[name] = getattr(self, name)
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.timeout is not None:
            kwargs["max_time"] = self.timeout
        return kwargs


#: The per-call options every component takes, with what they mean.
CALL_OPTIONS: dict[str, str] = {
    name: field.description or "" for name, field in GenerationOptions.model_fields.items()
}
