"""parallelcomp-llm: training-free ParallelComp long-context inference over transformers models."""

from .answer import Answer, AnswerStats, AnswerStream, ChunkInfo
from .config import ParallelCompConfig
from .context_cache import ContextCache, ContextCacheMismatchError
from .engine import GenerationOptions, ParallelCompEngine
from .errors import (
    ContextTooLongError,
    DeviceMemoryError,
    EngineBusyError,
    InvalidConfigError,
    InvalidInputError,
    ModelDownloadError,
    ParallelCompError,
    RequestTimeoutError,
    UnsupportedModelError,
)

__all__ = [
    "Answer",
    "AnswerStats",
    "AnswerStream",
    "ChunkInfo",
    "ContextCache",
    "ContextCacheMismatchError",
    "ContextTooLongError",
    "DeviceMemoryError",
    "EngineBusyError",
    "GenerationOptions",
    "InvalidConfigError",
    "InvalidInputError",
    "ModelDownloadError",
    "ParallelCompConfig",
    "ParallelCompEngine",
    "ParallelCompError",
    "RequestTimeoutError",
    "UnsupportedModelError",
]
