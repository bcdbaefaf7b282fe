"""The AI models of one configuration, behind the Enterprise gate (spec/services.md §4).

:meth:`AiModels.build` turns the ``AiModel`` objects into clients and the ``SpamLlm`` setting into a
:class:`Classifier`. A model whose headers or secrets cannot be built is left out with a build
error naming its JSON path, so a request is never sent without its configured authentication.
Every call checks the licence at call time; building never does network I/O.
"""
from __future__ import annotations

from ... import events
from ...errors import ConfigError
from .classification import Classifier
from .client import AiModelClient
from .config import SpamLlmEnable


class UnknownModel(LookupError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"no AiModel named {name!r}" + (f" (configured: {', '.join(known)})" if known else
                                                         " (no AiModel is configured)"))


class AiModels:
    """Clients by id and by name, the optional classifier, and the build errors."""

    def __init__(self) -> None:
        self.by_id: dict[str, AiModelClient] = {}
        self.by_name: dict[str, AiModelClient] = {}
        self.classifier: Classifier | None = None
        self.errors: list[ConfigError] = []

    @classmethod
    def build(cls, cfg, enterprise) -> "AiModels":
        """``cfg`` is a loaded :class:`stalwart.config.Config`; ``enterprise`` an ``EnterpriseState``.

        Emits ``server.licensing`` once when AI features are configured but no licence is in force:
        they stay configured and refuse each call until a licence is (renewal, or a reload).
        """
        out = cls()
        for i, model in enumerate(cfg.AiModel):
            path = f"$.AiModel[{i}]"
            try:
                client = AiModelClient(model, path, gate=enterprise.require)
            except ConfigError as exc:
                out.errors.append(exc)
                events.emit("ai.build-error", level="error", Id=model.name, Details=str(exc))
                continue
            out.by_id[str(model.id)] = client
            out.by_name.setdefault(model.name, client)
        llm = cfg.SpamLlm
        if isinstance(llm, SpamLlmEnable):
            client = out.by_id.get(llm.model_id) or out.by_name.get(llm.model_id)
            if client is None:
                exc = ConfigError("$.SpamLlm.modelId", f"no usable AiModel has id {llm.model_id!r}")
                out.errors.append(exc)
                events.emit("ai.build-error", level="error", Id="SpamLlm", Details=str(exc))
            else:
                out.classifier = Classifier(llm, client)
        if (out.by_id or out.classifier) and not enterprise.active():
            events.emit("server.licensing", level="warn", Reason="AI features are off",
                        Details=f"{len(out.by_id)} AI model(s) configured: {enterprise.reason()}. "
                                "This feature is only available in the Enterprise edition.")
        return out

    def get(self, name: str) -> AiModelClient:
        """By name; ``""`` picks the only model when exactly one is configured (§4.3 step 4)."""
        if name == "" and len(self.by_id) == 1:
            return next(iter(self.by_id.values()))
        client = self.by_name.get(name) or self.by_id.get(name)
        if client is None:
            raise UnknownModel(name, sorted(self.by_name))
        return client

    async def llm_prompt(self, model_name: object, prompt: object, temperature: object = None,
                         trusted: bool = True, may_interact: bool = False) -> str | bool:
        """Sieve ``llm_prompt(model_name, prompt, temperature)`` (spec/services.md §4.3).

        Returns the answer, or ``False`` for every failure as the reference does: arguments that are
        not strings, an untrusted (user) script without the ``interactAi`` permission, an unknown
        model, no licence in force at call time, or a model error.
        """
        from ..license.state import EnterpriseRequired
        from .client import AiError

        if not isinstance(model_name, str) or not isinstance(prompt, str):
            return False
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            temperature = None  # the model's own temperature; numbers are clamped by ask()
        if not trusted and not may_interact:
            events.emit("security.unauthorized", level="warn", Details="llm_prompt needs the interactAi permission")
            return False
        try:
            client = self.get(model_name)
        except UnknownModel:
            return False
        try:
            answer = await client.ask(prompt, temperature)
        except EnterpriseRequired as exc:
            events.emit("ai.api-error", level="warn", Id=client.name, Reason="Enterprise edition required",
                        Details=str(exc))
            return False
        except AiError:
            return False  # ask() has emitted ai.api-error
        events.emit("ai.llm-response", Id=client.name, Value=prompt[:200], Details=answer.text[:500],
                    Elapsed=answer.elapsed_ms, **answer.event_keys())
        return answer.text

    def close(self) -> None:
        for client in self.by_id.values():
            client.close()
