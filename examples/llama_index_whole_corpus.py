"""One question over a folder of text files, asked two ways with LlamaIndex and the default model.

    python examples/llama_index_whole_corpus.py
    python examples/llama_index_whole_corpus.py --folder notes/ --question "Who signed it?"

The files are loaded with `SimpleDirectoryReader` and split into nodes by `SentenceSplitter`. The
usual retrieval query engine (`RetrieverQueryEngine` over `BM25Retriever`, from
`llama-index-retrievers-bm25`: no embeddings to download) retrieves the top-k nodes and packs them
into one prompt; `LongContextQueryEngine` hands every node to the ParallelComp engine in one call.
Both answers are printed with the nodes they came from. Scores: BM25 for the top-k engine; for
ParallelComp, the node's relevance share (0 to 1, higher is more relevant). Install the retriever
with `pip install -e "./integrations/llama_index[examples]"`; the measured comparison, by task
family, is `docs/long-context-or-retrieval.md`.

Without `--folder`, a demo corpus of about 10,000 tokens (more than the model's trained window)
is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import Stemmer
from llama_index.core import Settings, SimpleDirectoryReader
from llama_index.core.base.response.schema import Response
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.llms.parallelcomp import LongContextQueryEngine, ParallelCompLLM
from llama_index.retrievers.bm25 import BM25Retriever

from parallelcomp_llm import ParallelCompEngine

SHOWN_SOURCES = 8
DEMO_QUESTION = "What is the door code of the archive room? Answer with the number only."
DEMO_FACT = "Note for the night staff: the door code of the archive room is 7291. "
DEMO_FILLER = (
    "The committee met on Monday and reviewed the schedule for the coming quarter. "
    "Several members asked for more time, and the discussion moved on to the catering budget. "
)


def write_demo_corpus(folder: Path, count_tokens) -> Path:
    """Three meeting-note files of about 3,300 tokens each; the fact sits in the second one."""
    repeats = 3_300 // count_tokens(DEMO_FILLER)
    for number in (1, 2, 3):
        text = DEMO_FILLER * repeats
        if number == 2:
            middle = len(text) // 2
            cut = text.index("The committee", middle)
            text = text[:cut] + DEMO_FACT + text[cut:]
        (folder / f"meeting-notes-{number}.txt").write_text(text, encoding="utf-8")
    return folder


def show(title: str, response: Response) -> None:
    print(f"== {title}")
    print(str(response).strip())
    for source in response.source_nodes[:SHOWN_SOURCES]:
        name = Path(source.node.metadata.get("file_path", source.node.node_id)).name
        score = "-" if source.score is None else f"{source.score:.3f}"
        print(f"   source: {name}, node {source.node.node_id[:8]}, score {score}")
    if len(response.source_nodes) > SHOWN_SOURCES:
        print(f"   ... and {len(response.source_nodes) - SHOWN_SOURCES} more nodes")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", type=Path, help="folder of .txt files (default: a demo corpus)")
    parser.add_argument("--question", default=DEMO_QUESTION)
    parser.add_argument(
        "--top-k", type=int, default=2, help="nodes the usual query engine retrieves"
    )
    args = parser.parse_args()

    # SmolLM2-135M-Instruct; the context is cut into 2,048-token chunks and the 2 chunks that best
    # predict the question are kept, so the sources below are the nodes of those 2 chunks.
    llm = ParallelCompLLM(engine=ParallelCompEngine.default(chunk_tokens=2048, keep_chunks=2))
    Settings.llm = llm
    Settings.tokenizer = llm.tokenizer  # node sizes and prompt sizes in the model's own tokens

    folder = args.folder or write_demo_corpus(Path(tempfile.mkdtemp()), llm.engine.count_tokens)
    documents = SimpleDirectoryReader(
        str(folder), required_exts=[".txt"], recursive=True
    ).load_data()
    nodes = SentenceSplitter(chunk_size=512, chunk_overlap=0).get_nodes_from_documents(documents)
    print(f"{len(documents)} files, {len(nodes)} nodes; question: {args.question}\n")

    retriever = BM25Retriever.from_defaults(
        nodes=nodes, similarity_top_k=args.top_k, stemmer=Stemmer.Stemmer("english")
    )
    show(
        f"top-{args.top_k} query engine (BM25Retriever)",
        RetrieverQueryEngine.from_args(retriever, llm=llm).query(args.question),
    )
    show(
        "LongContextQueryEngine (every node)",
        LongContextQueryEngine(llm=llm, nodes=nodes).query(args.question),
    )


if __name__ == "__main__":
    main()
