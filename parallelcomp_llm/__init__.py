"""parallelcomp-llm: training-free ParallelComp long-context inference over transformers models."""

from .answer import Answer, AnswerStats, ChunkInfo
from .config import ParallelCompConfig
from .context_cache import ContextCache, ContextCacheMismatchError
from .decode_settings import DecodeSettings
from .engine import ParallelCompEngine
from .errors import (
    ContextTooLongError,
    DeviceMemoryError,
    EngineBusyError,
    InvalidConfigError,
    InvalidInputError,
    ModelDownloadError,
    ParallelCompError,
    RequestCancelledError,
    RequestTimeoutError,
    StageError,
    UnsupportedModelError,
)
from .streams import AnswerStream
from .tracing import StageObserver

__version__ = "0.2.0"

__all__ = [
    "Answer",
    "AnswerStats",
    "AnswerStream",
    "ChunkInfo",
    "ContextCache",
    "ContextCacheMismatchError",
    "ContextTooLongError",
    "DecodeSettings",
    "DeviceMemoryError",
    "EngineBusyError",
    "InvalidConfigError",
    "InvalidInputError",
    "ModelDownloadError",
    "ParallelCompConfig",
    "ParallelCompEngine",
    "ParallelCompError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "StageError",
    "StageObserver",
    "UnsupportedModelError",
]
