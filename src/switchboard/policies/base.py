"""What every policy shares: reasons, settings models, and the enum-keyed strategy registry.

A strategy is one small class with one abstract method, constructed from its concern's settings model;
`Registry.create(settings)` picks the class named by `settings.kind`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict
from switchboard.frozen import fast_init


class PolicySettings(BaseModel):
    """Base of the per-concern settings models: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class Reason:
    """Why a decision was made: a stable code (for headers, metrics, tests) and a sentence for humans."""

    code: enum.Enum
    detail: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.detail}"


KindT = TypeVar("KindT", bound=enum.Enum)
StrategyT = TypeVar("StrategyT")


class Registry(Generic[KindT, StrategyT]):
    """Strategy classes of one concern, keyed by the concern's kind enum."""

    def __init__(self, concern: str) -> None:
        self.concern = concern
        self._classes: dict[KindT, type[StrategyT]] = {}

    def register(self, kind: KindT) -> Callable[[type[StrategyT]], type[StrategyT]]:
        def decorate(cls: type[StrategyT]) -> type[StrategyT]:
            if kind in self._classes:
                raise ValueError(f"{self.concern}: {kind.value} is registered twice")
            self._classes[kind] = cls
            return cls

        return decorate

    def kinds(self) -> list[KindT]:
        return list(self._classes)

    def create(self, settings: PolicySettings) -> StrategyT:
        """The strategy named by `settings.kind`, built from `settings`; raises KeyError for an unknown kind."""
        kind = settings.kind  # type: ignore[attr-defined]
        try:
            cls = self._classes[kind]
        except KeyError:
            known = ", ".join(k.value for k in self._classes)
            raise KeyError(f"{self.concern}: no strategy '{kind}'; known: {known}") from None
        return cls(settings)  # type: ignore[call-arg]
