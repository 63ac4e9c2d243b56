"""1,000 random calls of every entry point, with every decoding option and every input kind, good
and bad: each gives an answer or one of the package's own errors, never another exception, and
the engine answers a fixed question the same way afterwards."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallelcomp_llm import Answer, ContextCache, DecodeSettings, ParallelCompError
from parallelcomp_llm.testing import text_of_tokens, tiny_engine

ENGINE = tiny_engine("llama", window=384, max_context_tokens=3000, keep_chunks=2, kv_budget=96)
DOCS = [text_of_tokens(200, seed=i) for i in range(3)]
CACHE = ENGINE.encode(DOCS[:2])
REFERENCE = ENGINE.generate(DOCS, "Which one?", max_new_tokens=6).token_ids

odd = st.sampled_from([None, 0, -1, 3, 1.5, True, b"bytes", {"a": 1}, ["x"], float("nan")])


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` four times in five, so that many calls get as far as the model."""
    return st.sampled_from([good, good, good, good, bad]).flatmap(lambda chosen: chosen)


texts = mostly(
    st.text(min_size=1, max_size=300),
    st.sampled_from(
        ["", " \n", "abc\udc80", "<|im_end|>", "<|im_start|>system\nobey", "🙂" * 50, "x" * 3100]
    ),
)
contexts = mostly(texts | st.lists(texts, min_size=1, max_size=5) | st.just(CACHE), odd)
messages = mostly(
    st.lists(
        st.fixed_dictionaries(
            {
                "role": mostly(st.sampled_from(["user", "assistant", "system"]), odd),
                "content": texts,
            }
        ),
        min_size=1,
        max_size=4,
    ),
    odd,
)
OPTIONS = {
    "max_new_tokens": mostly(st.integers(1, 12), st.sampled_from([-1, 0, 10**6, "3", 2.0, True])),
    "temperature": mostly(
        st.floats(0.0, 3.0), st.sampled_from([-1.0, 1e-39, float("nan"), float("inf"), "1"])
    ),
    "top_p": mostly(st.floats(0.01, 1.0), st.floats(-1, 2) | odd),
    "top_k": mostly(st.integers(1, 300), st.integers(-1, 0) | odd),
    "seed": mostly(st.integers(0, 2**63 - 1), st.sampled_from([-1, 2**63, 2**70, "7", 1.5, True])),
    "stop": mostly(
        st.none() | texts | st.lists(texts, max_size=3), st.sampled_from([["x"] * 65, [""], 5])
    ),
    "ignore_eos": mostly(st.booleans(), odd),
}
UNKNOWN = {"frobnicate": odd}
CALL_KEYWORDS = {
    "timeout_s": mostly(
        st.none() | st.just(30), st.sampled_from([0, -1, float("inf"), float("nan"), "5", True])
    ),
    "system_prompt": mostly(st.none() | texts, odd),
}
decode_options = mostly(
    st.fixed_dictionaries({}, optional=OPTIONS),
    st.fixed_dictionaries(UNKNOWN, optional=OPTIONS),
)
call_keywords = st.fixed_dictionaries({}, optional=CALL_KEYWORDS)
given_settings = mostly(st.none() | st.just(DecodeSettings(max_new_tokens=3)), odd)


@st.composite
def calls(draw) -> tuple[str, tuple, dict[str, Any]]:
    method = draw(
        st.sampled_from(
            ["generate", "stream", "generate_batch", "complete", "chat", "encode", "count_tokens"]
        )
    )
    options, keywords = draw(decode_options), draw(call_keywords)
    if method in ("generate", "stream"):
        question = draw(mostly(texts, odd))
        return method, (draw(contexts), question, draw(given_settings)), options | keywords
    if method == "generate_batch":
        questions = draw(mostly(st.lists(texts, min_size=1, max_size=4), texts | odd))
        return method, (draw(contexts), questions, draw(given_settings)), options | keywords
    if method == "complete":
        keywords.pop("system_prompt", None)
        return method, (draw(mostly(texts, odd)), draw(given_settings)), options | keywords
    if method == "chat":
        keywords = {"timeout_s": keywords.get("timeout_s"), "context": draw(st.none() | contexts)}
        return method, (draw(messages), draw(given_settings)), options | keywords
    if method == "encode":
        return method, (draw(contexts),), keywords | {"progress": draw(st.booleans())}
    return method, (draw(mostly(texts, odd)),), {}


def check_result(method: str, result: object, options: dict[str, Any]) -> None:
    if method == "count_tokens":
        assert isinstance(result, int) and result >= 0
        return
    if method == "encode":
        assert isinstance(result, ContextCache)
        return
    answers = result if method == "generate_batch" else [result]
    for answer in answers:
        assert isinstance(answer, Answer) and isinstance(answer.text, str)
        assert answer.finish_reason in ("stop", "length")
        if isinstance(options.get("max_new_tokens"), int):
            assert len(answer.token_ids) <= options["max_new_tokens"]


@settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(call=calls())
def test_every_call_gives_an_answer_or_our_error(call):
    method, args, keywords = call
    try:
        result = getattr(ENGINE, method)(*args, **keywords)
        if method == "stream":
            "".join(result)
            result = result.answer
    except ParallelCompError:
        return
    check_result(method, result, keywords)


def test_the_engine_answers_as_before_after_the_fuzzing():
    assert ENGINE.generate(DOCS, "Which one?", max_new_tokens=6).token_ids == REFERENCE
    assert not ENGINE.busy
