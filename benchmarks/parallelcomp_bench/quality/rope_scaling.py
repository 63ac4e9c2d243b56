"""Per-item RoPE scaling of a loaded model with transformers' own rope types: the model's rotary
embedding is swapped for a scaled one while an item runs."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from transformers import PreTrainedModel

ROPE_TYPES = ("linear", "dynamic", "yarn")


class RopeScaling:
    """Scaled rotary embeddings of one transformers rope type ("linear", "dynamic" NTK or "yarn")
    for `model`, one per scaling factor.

    Each is built by the model's own rotary class from a copy of the model's config whose
    `rope_parameters` hold the rope type, the factor, the model's base `rope_theta` (and
    `partial_rotary_factor`, if any) and, for yarn, the trained window as
    `original_max_position_embeddings`; any scaling the model itself had is replaced.

    Linear and yarn take factor = tokens / trained window. "dynamic" takes factor 1: transformers
    then raises the base by (length / window) ** (d / (d - 2)) for the current length, which is
    NTK-aware scaling to that length; its factor f would scale by (f * length / window - f + 1),
    about f times too much when f is already length / window.
    """

    def __init__(self, model: PreTrainedModel, rope_type: str) -> None:
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type must be one of {ROPE_TYPES}, got {rope_type!r}")
        self.model = model
        self.rope_type = rope_type
        self.window = int(model.config.max_position_embeddings)
        """The trained window that factors are relative to."""
        self.rotaries: dict[float, torch.nn.Module] = {}
        """The scaled rotary embeddings made so far, by factor."""

    def factor_for(self, total_tokens: int) -> float:
        """The rope type's factor for a prompt and its answer of `total_tokens` that exceed the
        trained window: how many windows they span, or 1 for "dynamic"."""
        return 1.0 if self.rope_type == "dynamic" else total_tokens / self.window

    @contextlib.contextmanager
    def scaled_for(self, total_tokens: int) -> Iterator[float | None]:
        """Run the `with` block with RoPE scaled by `factor_for(total_tokens)` (yielded); within
        the trained window the model is left as it is (None is yielded)."""
        if total_tokens <= self.window:
            yield None
            return
        factor = self.factor_for(total_tokens)
        decoder = self.model.model
        original = decoder.rotary_emb
        decoder.rotary_emb = self.rotary_for(factor, type(original))
        try:
            yield factor
        finally:
            decoder.rotary_emb = original

    def rotary_for(self, factor: float, rotary_class: type[torch.nn.Module]) -> torch.nn.Module:
        """The scaled rotary embedding for `factor`, in its state for a new sequence."""
        device = next(self.model.parameters()).device
        rotary = self.rotaries.get(factor)
        if rotary is None:
            config = copy.deepcopy(self.model.config)
            base = config.rope_parameters
            parameters = {
                key: base[key] for key in ("rope_theta", "partial_rotary_factor") if key in base
            }
            parameters |= {"rope_type": self.rope_type, "factor": factor}
            if self.rope_type == "yarn":
                parameters["original_max_position_embeddings"] = self.window
            config.rope_parameters = parameters
            rotary = rotary_class(config=config).to(device)
            self.rotaries[factor] = rotary
        # A "dynamic" rotary keeps the frequencies of the longest sequence it has seen; a pass at
        # position 0 takes transformers' own path back to the trained-window frequencies, so every
        # item starts from the same state. Other rope types keep no state.
        rotary(torch.empty(0, device=device), torch.zeros((1, 1), dtype=torch.long, device=device))
        return rotary
