"""LangChain integration of parallelcomp-llm: ask questions over whole corpora, no retrieval.

`ParallelCompLLM` (a `BaseLLM`) and `ChatParallelComp` (a `BaseChatModel`) take long context as the
`context=` keyword, or as long prompts; `create_long_context_chain` answers `{"documents", "input"}`
with `{"answer", "context"}` (the kept documents), as `create_retrieval_chain` does. The chat model
also calls tools (`bind_tools`) and answers in a schema (`with_structured_output`).
"""

from .chains import create_long_context_chain
from .chat_models import ChatParallelComp
from .context import ContextInput
from .errors import ParallelCompContextOverflowError
from .llms import ParallelCompLLM

__version__ = "0.2.0"

__all__ = [
    "ChatParallelComp",
    "ContextInput",
    "ParallelCompContextOverflowError",
    "ParallelCompLLM",
    "create_long_context_chain",
]
