"""LlamaIndex integration of parallelcomp-llm: answer over all of an index's nodes in one call.

`ParallelCompLLM` is a LlamaIndex LLM over a `ParallelCompEngine`; `LongContextQueryEngine`
sends every node of an index to it as separate documents, instead of retrieving a top-k.
"""

from .base import ParallelCompLLM
from .query_engine import LongContextQueryEngine

__all__ = ["LongContextQueryEngine", "ParallelCompLLM"]
