"""The ParallelComp stages, one small class each: chunk scorers, KV selectors, the budget policy
and the attention-bias calibrator; `Stages` is the set one engine runs with.

A new scorer or selector is one class: subclass `ChunkScorer` or `KVSelector` (or
`ScoredSelector`), and either pass an instance to the engine (`scorer=`, `selector=`) or register
it (`@SCORERS.register("name")`) to choose it by name in `ParallelCompConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InvalidConfigError
from .base import Registry, Stage
from .budget import BudgetPolicy, BudgetSplit, EvenBudget
from .calibration import BiasCalibrator, Calibrator
from .scoring import (
    SCORERS,
    AttentionMassScorer,
    ChunkScorer,
    KeyMatchScorer,
    NllScorer,
    QuestionEvidence,
    QuestionQueries,
    RetrievalHeadScorer,
    WindowAttention,
)
from .selection import (
    SELECTORS,
    ChunkEntries,
    KVSelector,
    ScoredSelector,
    SnapKVSelector,
    top_entries,
)

if TYPE_CHECKING:
    from ..config import ParallelCompConfig


@dataclass(frozen=True)
class Stages:
    """The stages an engine runs: built from a `ParallelCompConfig`, or given one by one."""

    scorer: ChunkScorer
    selector: KVSelector
    budget: BudgetPolicy
    calibrator: Calibrator | None

    @classmethod
    def from_config(
        cls,
        config: ParallelCompConfig,
        *,
        scorer: ChunkScorer | None = None,
        selector: KVSelector | None = None,
        budget: BudgetPolicy | None = None,
        calibrator: Calibrator | None = None,
    ) -> Stages:
        """The stages `config` names, except those given here."""
        if calibrator is None and config.calibration_layers is not None:
            calibrator = BiasCalibrator.from_config(config)
        stages = cls(
            scorer or SCORERS.build(config.chunk_scoring, config),
            selector or SELECTORS.build(config.kv_selection, config),
            budget or EvenBudget.from_config(config),
            calibrator,
        )
        kinds = {"scorer": ChunkScorer, "selector": KVSelector, "budget": BudgetPolicy}
        if stages.calibrator is not None:
            kinds["calibrator"] = Calibrator
        for field, kind in kinds.items():
            stage = getattr(stages, field)
            if not isinstance(stage, kind):
                raise InvalidConfigError(
                    f"{field} must be a {kind.__name__} instance, got {type(stage).__name__}"
                )
        return stages

    def describe(self) -> dict[str, dict[str, object] | None]:
        """Each stage's class, name and parameters, for result records."""
        return {
            "scorer": self.scorer.describe(),
            "selector": self.selector.describe(),
            "budget": self.budget.describe(),
            "calibrator": self.calibrator.describe() if self.calibrator else None,
        }


__all__ = [
    "SCORERS",
    "SELECTORS",
    "AttentionMassScorer",
    "BiasCalibrator",
    "BudgetPolicy",
    "BudgetSplit",
    "Calibrator",
    "ChunkEntries",
    "ChunkScorer",
    "EvenBudget",
    "KVSelector",
    "KeyMatchScorer",
    "NllScorer",
    "RetrievalHeadScorer",
    "QuestionEvidence",
    "QuestionQueries",
    "Registry",
    "ScoredSelector",
    "SnapKVSelector",
    "Stage",
    "Stages",
    "WindowAttention",
    "top_entries",
]
