"""Answer a question over a whole folder of text files with LangChain, next to top-k retrieval.

    python examples/langchain_whole_corpus.py [FOLDER] [QUESTION]

Every `*.txt` file under FOLDER becomes a `Document`. The same question is answered twice with the
same model (`ChatParallelComp`, by default the embedded SmolLM2-135M-Instruct):

1. `create_long_context_chain`: every document goes to the engine as its own piece of context;
   ParallelComp reads them all, whatever their total length.
2. A classic retrieval chain: a BM25 retriever picks the top-k paragraphs, split by
   `RecursiveCharacterTextSplitter`, which are pasted into the prompt: the usual "retrieve, then
   stuff the prompt" design, with no embeddings to download. LangChain's own `BM25Retriever` lives
   in `langchain-community`, which LangChain sunset in May 2026 (langchain-community issue 674),
   so `Bm25Retriever` below is a LangChain `BaseRetriever` over bm25s, the BM25 library that
   LlamaIndex's retriever uses. Install it: `pip install -e "./integrations/langchain[examples]"`.

Without arguments, a demo folder is written to a temporary directory: 36 notes of garden-meeting
filler (about 10,600 tokens, more than the default model's trained window of 8,192), one of which
holds the code of the shed padlock, and the question asks for that code. Here BM25 can find the
right paragraph too (the words "code" and "padlock" occur only there); the two answers
side by side show the two designs on the same data, not a benchmark; the measured comparison, by
task family, is `docs/long-context-or-retrieval.md`. On two CPU cores the long-context answer
takes a few minutes (prefill of the whole corpus).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import bm25s
import Stemmer
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_parallelcomp import ChatParallelComp, create_long_context_chain
from langchain_text_splitters import RecursiveCharacterTextSplitter

DEMO_QUESTION = "What is the code of the shed padlock? Answer with the number only."
STEMMER = Stemmer.Stemmer("english")


class Bm25Retriever(BaseRetriever):
    """The `k` documents that bm25s ranks best for the query (English stop words and stems)."""

    documents: list[Document]
    k: int = 3
    index: bm25s.BM25 | None = None

    model_config = {"arbitrary_types_allowed": True}

    def model_post_init(self, context: object) -> None:
        texts = [document.page_content for document in self.documents]
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=STEMMER, show_progress=False)
        self.index = bm25s.BM25()
        self.index.index(tokens, show_progress=False)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=STEMMER, show_progress=False)
        k = min(self.k, len(self.documents))
        ranked, _ = self.index.retrieve(tokens, k=k, show_progress=False)
        return [self.documents[int(position)] for position in ranked[0]]


def load_folder(folder: Path) -> list[Document]:
    return [
        Document(page_content=path.read_text(encoding="utf-8"), metadata={"source": str(path)})
        for path in sorted(folder.rglob("*.txt"))
    ]


def write_demo_folder(folder: Path) -> None:
    filler = (
        "The team met on {day} to review the plans for the garden. The tomatoes need more sun and "
        "the fence by the gate needs paint. Someone asked about the keys to the shed again; the "
        "keys are labelled and most of them work.\n\n"
    )
    needle = (
        "Note from the caretaker: the code of the shed padlock is 52814. Remember it. "
        "52814 is the code of the shed padlock.\n"
    )
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
    for number in range(36):
        text = filler.format(day=days[number % 5]) * 6 + (needle if number == 21 else "")
        (folder / f"note_{number:02d}.txt").write_text(text, encoding="utf-8")


def main() -> None:
    if len(sys.argv) > 1:
        folder = Path(sys.argv[1])
        question = sys.argv[2] if len(sys.argv) > 2 else input("Question: ")
    else:
        folder = Path(tempfile.mkdtemp(prefix="parallelcomp-demo-"))
        write_demo_folder(folder)
        question = DEMO_QUESTION
    documents = load_folder(folder)
    if not documents:
        sys.exit(f"no .txt files under {folder}")

    llm = ChatParallelComp(max_tokens=48)
    total = sum(llm.get_num_tokens(d.page_content) for d in documents)
    print(
        f"{len(documents)} documents, {total} tokens (trained window: {llm.engine.native_window})"
    )
    print(f"Question: {question}\n")

    whole = create_long_context_chain(llm)
    print("Whole corpus (create_long_context_chain):")
    print(" ", whole.invoke({"documents": documents, "input": question})["answer"].strip(), "\n")

    splitter = RecursiveCharacterTextSplitter(chunk_size=400, chunk_overlap=0)
    retriever = Bm25Retriever(documents=splitter.split_documents(documents), k=3)
    prompt = ChatPromptTemplate.from_template(
        "Answer the question using the context.\n\nContext:\n{context}\n\nQuestion: {question}"
    )
    top_k = (
        {
            "context": lambda x: "\n\n".join(
                p.page_content for p in retriever.invoke(x["question"])
            ),
            "question": lambda x: x["question"],
        }
        | prompt
        | llm
        | StrOutputParser()
    )
    print("Top-3 retrieval (BM25 over bm25s, paragraphs pasted into the prompt):")
    print(" ", top_k.invoke({"question": question}).strip())


if __name__ == "__main__":
    main()
