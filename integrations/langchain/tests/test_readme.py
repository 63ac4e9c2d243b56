"""The LangChain snippets of this package's README and of the project README run as written: the
`answer` snippet on the tiny engine, and `load` + `answer` on the real default model."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_parallelcomp import ChatParallelComp

from parallelcomp_llm.testing import readme_snippet

HERE = Path(__file__).resolve()
READMES = [HERE.parents[1] / "README.md", HERE.parents[3] / "README.md"]
both_readmes = pytest.mark.parametrize("readme", READMES, ids=["package", "project"])


@both_readmes
def test_answer_snippet_runs_and_prints_the_engine_answer(engine, capsys, readme):
    namespace = {"llm": ChatParallelComp(engine=engine, max_tokens=32)}
    snippet = compile(readme_snippet(readme, "answer"), str(readme), "exec")
    exec(snippet, namespace)  # noqa: S102 - running the README is the point
    texts = [d.page_content for d in namespace["documents"]]
    expected = engine.generate(texts, namespace["question"], max_new_tokens=32).text
    assert namespace["answer"] == namespace["streamed"] == expected
    assert capsys.readouterr().out == f"{expected}\n{expected}\n"


@pytest.mark.default_model
@both_readmes
def test_readme_snippets_run_with_the_default_model(readme):
    namespace: dict = {}
    code = readme_snippet(readme, "load") + readme_snippet(readme, "answer")
    snippet = compile(code, str(readme), "exec")
    exec(snippet, namespace)  # noqa: S102 - running the README is the point
    llm = namespace["llm"]
    texts = [d.page_content for d in namespace["documents"]]
    expected = llm.engine.generate(texts, namespace["question"], max_new_tokens=32).text
    assert namespace["answer"] == namespace["streamed"] == expected
