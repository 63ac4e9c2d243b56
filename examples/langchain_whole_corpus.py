"""Answer a question over a whole folder of text files with LangChain, next to top-k retrieval.

    python examples/langchain_whole_corpus.py [FOLDER] [QUESTION]

Every `*.txt` file under FOLDER becomes a `Document`. The same question is answered twice with the
same model (`ChatParallelComp`, by default the embedded SmolLM2-135M-Instruct):

1. `create_long_context_chain`: every document goes to the engine as its own piece of context;
   ParallelComp reads them all, whatever their total length.
2. A classic retrieval chain: a retriever picks the top-k paragraphs, which are pasted into the
   prompt. The retriever here is a small keyword retriever written for this example (BM25 scoring
   over lower-cased words, no embeddings, nothing downloaded); a real application would use a vector
   store. It stands for the usual "retrieve, then stuff the prompt" design, not for a tuned system.

Without arguments, a demo folder is written to a temporary directory: 36 notes of garden-meeting
filler (about 10,600 tokens, more than the default model's trained window of 8,192), one of which
holds the code of the shed padlock, and the question asks for that code. Here the keyword retriever
can find the right paragraph too (the words "code" and "padlock" occur only there); the two answers
side by side show the two designs on the same data, not a benchmark. Top-k retrieval falls short
when the answer needs more than k paragraphs or when the question's words differ from the text's.
On two CPU cores the long-context answer takes a few minutes (prefill of the whole corpus).
"""

from __future__ import annotations

import math
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_parallelcomp import ChatParallelComp, create_long_context_chain

DEMO_QUESTION = "What is the code of the shed padlock? Answer with the number only."


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class KeywordRetriever(BaseRetriever):
    """BM25 over the paragraphs of the documents: the k paragraphs sharing the most (weighted) words
    with the query."""

    paragraphs: list[Document]
    k: int = 3

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        bags = [Counter(words(p.page_content)) for p in self.paragraphs]
        average = sum(sum(b.values()) for b in bags) / max(1, len(bags))

        def idf(word: str) -> float:
            holding = sum(1 for b in bags if word in b)
            return math.log(1 + (len(bags) - holding + 0.5) / (holding + 0.5))

        def score(bag: Counter) -> float:
            length = sum(bag.values())
            return sum(
                idf(w) * bag[w] * 2.2 / (bag[w] + 1.2 * (0.25 + 0.75 * length / average))
                for w in set(words(query))
                if w in bag
            )

        ranked = sorted(range(len(bags)), key=lambda i: score(bags[i]), reverse=True)
        return [self.paragraphs[i] for i in ranked[: self.k]]


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

    paragraphs = [
        Document(page_content=part, metadata=d.metadata)
        for d in documents
        for part in d.page_content.split("\n\n")
        if part.strip()
    ]
    retriever = KeywordRetriever(paragraphs=paragraphs, k=3)
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
    print("Top-3 retrieval (keyword/BM25 retriever, paragraphs pasted into the prompt):")
    print(" ", top_k.invoke({"question": question}).strip())


if __name__ == "__main__":
    main()
