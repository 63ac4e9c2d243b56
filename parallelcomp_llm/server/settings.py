"""`ServerSettings`: where the server listens, who may call it, what it serves and its limits,
validated once (bad values raise `InvalidConfigError`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from ..default_model import MODEL_DIR_NAME
from ..errors import CheckedModel


def served_model_name(model: str | None) -> str:
    """The name a model is served under: a local folder's name, a Hugging Face Hub name as given,
    the default model's name for None."""
    if model is None:
        return MODEL_DIR_NAME
    path = Path(model)
    return path.resolve().name if path.exists() else model


class ServerSettings(CheckedModel):
    """Settings of the OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1, description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0: any free port).")
    api_key: SecretStr | None = Field(
        None,
        description="When set, every route but /health requires `Authorization: Bearer <key>`.",
    )
    model: str | None = Field(
        None, description="Model name or path to load; None: the default model."
    )
    model_name: str = Field(
        min_length=1,
        description="Name clients ask for in `model`. Default: derived from `model` "
        "(`served_model_name`).",
    )
    max_body_bytes: int = Field(
        16 * 2**20,
        ge=1024,
        le=2**30,
        description="Largest request body; a longer one gets 413 before any model work. The "
        "default holds a corpus of the default `max_context_tokens` (about 1 MB of English) "
        "many times over.",
    )
    max_contexts: int = Field(
        16,
        ge=1,
        le=4096,
        description="Most uploaded corpora kept (`POST /v1/contexts`); the least recently used "
        "goes first. Each keeps its encoded KV in memory.",
    )

    @field_validator("api_key")
    @classmethod
    def _non_blank_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and not key.get_secret_value().strip():
            raise ValueError("api_key must not be blank")
        return key

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        """`model_name` derived from `model` when not given (a bad `model` is left to its own
        check)."""
        if not isinstance(data, dict) or data.get("model_name") is not None:
            return data
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            return data
        return {**data, "model_name": served_model_name(model)}
