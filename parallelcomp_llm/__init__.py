"""parallelcomp-llm: training-free ParallelComp long-context inference over transformers models."""

from .answer import Answer, AnswerStats, ChunkInfo, ToolCall
from .config import ParallelCompConfig
from .context_cache import ContextCache, ContextCacheMismatchError
from .decode_settings import DecodeSettings
from .engine import ParallelCompEngine
from .errors import (
    AnswerFormatError,
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
from .loading import LoadOptions
from .response_format import ResponseFormat
from .streams import AnswerStream
from .tools import Tool, ToolSet
from .tracing import StageObserver

__version__ = "0.2.0"

__all__ = [
    "Answer",
    "AnswerFormatError",
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
    "LoadOptions",
    "ModelDownloadError",
    "ParallelCompConfig",
    "ParallelCompEngine",
    "ParallelCompError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "ResponseFormat",
    "StageError",
    "StageObserver",
    "Tool",
    "ToolCall",
    "ToolSet",
    "UnsupportedModelError",
]
