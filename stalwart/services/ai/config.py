"""Configuration objects of the AI services: ``AiModel`` (collection) and ``SpamLlm`` (singleton).

spec/services.md §4.1 and §4.2, with ``HttpAuth`` from spec/README.md "HttpAuth". These structs
mirror the options of ``stalwart.config.model._Object`` (camelCase names, unknown fields refused)
instead of importing it, because ``stalwart/config/model.py`` imports this module.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from ...config.types import Duration

Temperature = Annotated[float, Meta(ge=0.0, le=1.0)]
NonEmpty = Annotated[str, Meta(min_length=1)]


class _Object(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    set_fields: ClassVar[tuple[str, ...]] = ()


from ...config.httpauth import BasicAuth, BearerAuth, HttpAuth, Unauthenticated  # noqa: E402,F401

ModelType = Literal["Chat", "Text"]


class AiModel(_Object, kw_only=True):
    """One OpenAI-compatible endpoint (spec/services.md §4.1)."""

    id: str | None = None
    name: NonEmpty
    url: NonEmpty
    model: NonEmpty
    http_auth: HttpAuth
    model_type: ModelType = "Chat"
    timeout: Duration = Duration(120000)
    temperature: Temperature = 0.7
    allow_invalid_certs: bool = False
    http_headers: dict[str, str] = {}


DEFAULT_CATEGORIES = ["Unsolicited", "Commercial", "Harmful", "Legitimate"]
DEFAULT_CONFIDENCE = ["High", "Medium", "Low"]


class _Llm(msgspec.Struct, tag_field="@type", rename="camel", forbid_unknown_fields=True, kw_only=True):
    pass


class SpamLlmDisable(_Llm, tag="Disable"):
    """No message classification (the default)."""


class SpamLlmEnable(_Llm, tag="Enable"):
    """Classify each received message with the model ``modelId`` (spec/services.md §4.2).

    ``categories`` and ``confidence`` are trimmed and upper-cased by the classifier; ``separator`` is
    used as a whole string (several characters allowed: "We do better").
    """

    model_id: NonEmpty
    prompt: NonEmpty
    temperature: Temperature = 0.5
    separator: NonEmpty = ","
    response_pos_category: Annotated[int, Meta(ge=0)] = 0
    response_pos_confidence: Annotated[int, Meta(ge=0)] | None = 1
    response_pos_explanation: Annotated[int, Meta(ge=0)] | None = 2
    categories: Annotated[list[str], Meta(min_length=2)] = msgspec.field(
        default_factory=lambda: list(DEFAULT_CATEGORIES))
    confidence: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_CONFIDENCE))

    set_fields: ClassVar[tuple[str, ...]] = ("categories", "confidence")


SpamLlm = SpamLlmDisable | SpamLlmEnable


def validate(cfg) -> None:
    """Cross-object rules for ``AiModel`` and ``SpamLlm``; run after collection ids are assigned.

    Raises :class:`~stalwart.errors.ConfigError` with the JSON path of the offending field.
    """
    import urllib.parse

    from ...errors import ConfigError

    names: dict[str, int] = {}
    for i, model in enumerate(cfg.AiModel):
        path = f"$.AiModel[{i}]"
        if model.name in names:
            raise ConfigError(f"{path}.name",
                              f"duplicate AiModel name {model.name!r} (also AiModel[{names[model.name]}])")
        names[model.name] = i
        parts = urllib.parse.urlsplit(model.url)
        try:
            _ = parts.port  # raises ValueError for a port out of range
        except ValueError:
            raise ConfigError(f"{path}.url", f"{model.url!r} has an invalid port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{path}.url", f"{model.url!r} is not an http:// or https:// URL")
    llm = cfg.SpamLlm
    if isinstance(llm, SpamLlmEnable):
        ids = {str(m.id) for m in cfg.AiModel}
        if llm.model_id not in ids and llm.model_id not in names:
            raise ConfigError("$.SpamLlm.modelId", f"no AiModel has id or name {llm.model_id!r}")
        if len({c.strip().upper() for c in llm.categories if c.strip()}) < 2:
            raise ConfigError("$.SpamLlm.categories", "at least two distinct categories are needed")
