"""LangChain integration of parallelcomp-llm: ask questions over whole corpora, no retrieval.

`ParallelCompLLM` (a `BaseLLM`) and `ChatParallelComp` (a `BaseChatModel`) take long context as the
`context=` keyword; `create_long_context_chain` answers `{"documents", "question"}` inputs.
"""

from .chains import create_long_context_chain
from .chat_models import ChatParallelComp
from .context import ContextInput
from .llms import ParallelCompLLM

__all__ = ["ChatParallelComp", "ContextInput", "ParallelCompLLM", "create_long_context_chain"]
