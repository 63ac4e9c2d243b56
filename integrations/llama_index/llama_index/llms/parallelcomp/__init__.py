"""LlamaIndex integration of parallelcomp-llm: answer over all of an index's nodes in one call.

`ParallelCompLLM` is a LlamaIndex function-calling LLM over a `ParallelCompEngine` (tool calls,
and structured output by constrained decoding); `ParallelCompSynthesizer` is a response synthesizer
that hands the retrieved nodes to it as separate documents, in one call; `LongContextQueryEngine`
does so with every node of an index, instead of retrieving a top-k.
"""

from .base import ParallelCompLLM
from .query_engine import LongContextQueryEngine
from .synthesizer import ParallelCompSynthesizer

__version__ = "0.2.0"

__all__ = ["LongContextQueryEngine", "ParallelCompLLM", "ParallelCompSynthesizer"]
