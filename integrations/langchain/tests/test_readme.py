"""The LangChain snippets of this package's README and of the project README run as written: the
`answer` snippet on the tiny engine, and `load` + `answer` on the real default model."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_parallelcomp import ChatParallelComp
from langchain_parallelcomp.context import document_text

from parallelcomp_llm.testing import readme_snippet

HERE = Path(__file__).resolve()
READMES = [HERE.parents[1] / "README.md", HERE.parents[3] / "README.md"]
both_readmes = pytest.mark.parametrize("readme", READMES, ids=["package", "project"])


@both_readmes
def test_answer_snippet_runs_and_prints_the_engine_answer(engine, capsys, readme):
    namespace = {"llm": ChatParallelComp(engine=engine, max_tokens=32)}
    snippet = compile(readme_snippet(readme, "answer"), str(readme), "exec")
    exec(snippet, namespace)  # noqa: S102 - running the README is the point
    documents = namespace["documents"]
    answer = engine.generate(
        [document_text(d) for d in documents], namespace["question"], max_new_tokens=32
    )
    assert namespace["answer"] == namespace["streamed"] == answer.text
    kept = namespace["result"]["context"]
    assert sorted(d.page_content for d in kept) == sorted(
        documents[i].page_content for i in answer.stats.kept_documents
    )
    printed = capsys.readouterr().out
    assert printed.startswith(f"{answer.text}\n") and printed.endswith(f"\n{answer.text}\n")
    assert printed.count("\n") == 2 * answer.text.count("\n") + 2 + len(kept)


@pytest.mark.default_model
@both_readmes
def test_readme_snippets_run_with_the_default_model(readme):
    namespace: dict = {}
    code = readme_snippet(readme, "load") + readme_snippet(readme, "answer")
    snippet = compile(code, str(readme), "exec")
    exec(snippet, namespace)  # noqa: S102 - running the README is the point
    llm = namespace["llm"]
    texts = [document_text(d) for d in namespace["documents"]]
    expected = llm.engine.generate(texts, namespace["question"], max_new_tokens=32).text
    assert namespace["answer"] == namespace["streamed"] == expected
