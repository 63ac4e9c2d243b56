"""What every ParallelComp stage shares: validated, frozen parameters, and a registry by name.

A stage is one small class with one job (rank chunks, pick KV entries, share the budget, mask
attention-bias entries), like a kvpress press. Its parameters are pydantic fields, checked when it
is built; `from_config` builds it from the flat `ParallelCompConfig` users see.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar, Generic, Self, TypeVar

from pydantic import ConfigDict

from ..errors import CheckedModel, InvalidConfigError

if TYPE_CHECKING:
    from ..config import ParallelCompConfig


class Stage(CheckedModel):
    """Base class of the stages: frozen parameters; bad values raise `InvalidConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ClassVar[str] = ""
    """The name the stage is registered under (empty for unregistered stages, subclasses of
    registered ones included)."""

    def __init_subclass__(cls, **keywords: object) -> None:
        super().__init_subclass__(**keywords)
        cls.name = ""

    @classmethod
    def from_config(cls, config: ParallelCompConfig) -> Self:
        """The stage with the parameters `config` sets (default: none)."""
        return cls()

    def describe(self) -> dict[str, object]:
        """The stage's class, registered name and parameters, for result records."""
        return {"class": type(self).__name__, "name": self.name or None, **self.model_dump()}


StageT = TypeVar("StageT", bound=Stage)


class Registry(Generic[StageT]):
    """Stage classes of one kind by name: `@SCORERS.register("nll")` on a class registers it."""

    def __init__(self, kind: str, base: type[StageT]) -> None:
        self.kind = kind
        self.base = base
        self._classes: dict[str, type[StageT]] = {}

    def register(self, name: str):
        """Class decorator: register the class under `name` (which must be new)."""

        def add(cls: type[StageT]) -> type[StageT]:
            if not issubclass(cls, self.base):
                raise TypeError(f"a {self.kind} must subclass {self.base.__name__}")
            if name in self._classes:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            cls.name = name
            self._classes[name] = cls
            return cls

        return add

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def get(self, name: str) -> type[StageT]:
        """The class registered as `name`; `InvalidConfigError` naming the known ones if none."""
        if name not in self._classes:
            raise InvalidConfigError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self._classes)}"
            )
        return self._classes[name]

    def build(self, name: str, config: ParallelCompConfig) -> StageT:
        """The stage registered as `name`, with its parameters from `config`."""
        return self.get(name).from_config(config)
