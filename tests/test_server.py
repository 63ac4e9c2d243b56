"""`parallelcomp serve`'s app on a real uvicorn server over a tiny model: answers equal the
engine's, streams join to them, uploaded corpora are encoded once, tool calls round-trip, bad
input gets OpenAI's error shape with the right status and the server keeps serving, the API key
is enforced, a client that leaves a stream cancels it, and 64 concurrent clients get answers or
429s, never a 500."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from parallelcomp_llm.cli import main
from parallelcomp_llm.server import ServerSettings, create_app
from parallelcomp_llm.server.testing import WEATHER_TOOL, RunningServer
from parallelcomp_llm.testing import (
    CLOCK_TOOL,
    TEXT_THEN_CLOCK_CALL,
    ScriptedAnswer,
    count_prefills,
    forward_shapes,
    text_of_tokens,
    tiny_engine,
    tiny_model_folder,
)

pytestmark = pytest.mark.serving

MODEL = "tiny-llama"
KEY = "sk-test-key"
DOCS = [text_of_tokens(600, seed=index) for index in range(3)]
ASK = [{"role": "user", "content": "Which letter comes first?"}]
WEATHER = WEATHER_TOOL


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(
        window=2048,
        chunk_tokens=512,
        max_waiting_requests=2,
        max_context_tokens=20_000,
        answer_reserve_tokens=64,
        question_reserve_tokens=640,
    )


@pytest.fixture(scope="module")
def server(engine):
    settings = ServerSettings(model_name=MODEL, max_body_bytes=64 * 1024, max_contexts=2)
    with RunningServer(create_app(engine, settings)) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_server(engine):
    settings = ServerSettings(model_name=MODEL, api_key=KEY)
    with RunningServer(create_app(engine, settings)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def chat_body(**fields) -> dict:
    return {"model": MODEL, "messages": ASK, "max_tokens": 6} | fields


def post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, timeout=60, **kwargs)


def metric(server, name: str, **labels: str) -> float:
    """A sample's value in /metrics (0 when absent)."""
    wanted = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    )
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def check_serving(server, engine) -> None:
    """A good request after a bad one: still answered, as the engine answers it."""
    response = post(server, "/v1/chat/completions", json=chat_body())
    assert response.status_code == 200, response.text
    expected = engine.chat(ASK, max_new_tokens=6).text
    assert response.json()["choices"][0]["message"]["content"] == expected


# -- answers --------------------------------------------------------------------------------


def test_models_name_the_served_model(server, client, engine):
    [card] = client.models.list().data
    assert card.id == MODEL and card.owned_by == "parallelcomp"
    assert card.model_extra["max_model_len"] == engine.context_window == 20_000
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as refused:
        client.models.retrieve("gpt-4o")
    assert refused.value.code == "model_not_found"


def test_chat_over_documents_is_the_engines_answer(client, engine):
    documents = [{"title": "Letters", "text": DOCS[0]}, {"text": DOCS[1]}]
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=8, extra_body={"documents": documents}
    )
    expected = engine.chat(ASK, context=["Letters\n\n" + DOCS[0], DOCS[1]], max_new_tokens=8)
    assert expected.stats.chunks_total >= 2
    untitled = engine.chat(ASK, context=DOCS[:2], max_new_tokens=8)
    [choice] = reply.choices
    assert choice.message.content == expected.text and choice.message.role == "assistant"
    assert choice.finish_reason == expected.finish_reason == "length"
    assert reply.model == MODEL and reply.id.startswith("chatcmpl-")
    assert reply.usage.completion_tokens == len(expected.token_ids) == 8
    assert reply.usage.prompt_tokens == expected.stats.input_tokens
    assert untitled.stats.input_tokens < expected.stats.input_tokens  # the title was read
    assert expected.stats.input_tokens > expected.stats.context_tokens >= 1200
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 8


def test_a_chat_stream_joins_to_the_answer_and_reports_usage(client, engine):
    expected = engine.chat(ASK, context=DOCS, max_new_tokens=10)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"documents": [{"text": text} for text in DOCS]},
        )
    )
    deltas = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(deltas) == expected.text and len(deltas) > 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [chunk.choices[0].finish_reason for chunk in chunks[-2:-1]] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == expected.stats.input_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_completions_whole_and_streamed_are_the_engines(client, engine):
    expected = engine.complete("Once upon a time", max_new_tokens=7)
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=7)
    assert whole.choices[0].text == expected.text and whole.object == "text_completion"
    assert whole.usage.prompt_tokens == expected.stats.prompt_tokens
    streamed = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=7, stream=True
    )
    chunks = list(streamed)
    assert "".join(chunk.choices[0].text for chunk in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_sampling_and_stop_settings_reach_the_engine(client, engine):
    sampled = engine.chat(ASK, max_new_tokens=12, temperature=0.9, top_p=0.8, seed=7)
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=12, temperature=0.9, top_p=0.8, seed=7
    )
    assert reply.choices[0].message.content == sampled.text
    greedy = engine.chat(ASK, max_new_tokens=12).text
    assert greedy != sampled.text
    stop = greedy[3:5]
    stopped = engine.chat(ASK, max_new_tokens=12, stop=[stop])
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, stop=stop)
    assert reply.choices[0].message.content == stopped.text == greedy[: greedy.index(stop)]
    assert reply.choices[0].finish_reason == stopped.finish_reason == "stop"
    newer = client.chat.completions.create(model=MODEL, messages=ASK, max_completion_tokens=4)
    assert newer.choices[0].message.content == engine.chat(ASK, max_new_tokens=4).text


def test_a_response_format_shapes_the_answer(client, engine):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    form = {"type": "json_schema", "json_schema": {"name": "check", "schema": schema}}
    expected = engine.chat(ASK, max_new_tokens=40, response_format=form)
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=40, response_format=form
    )
    assert reply.choices[0].message.content == expected.text
    assert isinstance(json.loads(expected.text)["ok"], bool)


def test_an_uploaded_corpus_is_encoded_once_and_can_be_dropped(server, client, engine):
    uploaded = post(server, "/v1/contexts", json={"documents": [{"text": t} for t in DOCS[1:]]})
    assert uploaded.status_code == 200, uploaded.text
    info = uploaded.json()
    assert info["object"] == "context" and info["chunks"] >= 2
    hits = metric(server, "parallelcomp_context_cache_hits_total")
    body = {"context_id": info["id"], "max_tokens": 6}
    first, second = (
        client.chat.completions.create(model=MODEL, messages=ASK, extra_body=body) for _ in range(2)
    )
    expected = engine.chat(ASK, context=DOCS[1:], max_new_tokens=6)
    assert first.choices[0].message.content == second.choices[0].message.content == expected.text
    assert first.usage.prompt_tokens_details.cached_tokens == info["context_tokens"]
    assert second.usage.prompt_tokens_details.cached_tokens == info["context_tokens"]
    assert metric(server, "parallelcomp_context_cache_hits_total") == hits + 2
    deleted = httpx.delete(f"{server.url}/v1/contexts/{info['id']}")
    assert deleted.json() == {"id": info["id"], "object": "context", "deleted": True}
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(model=MODEL, messages=ASK, extra_body=body)
    assert gone.value.code == "context_not_found" and gone.value.param == "context_id"
    assert httpx.delete(f"{server.url}/v1/contexts/{info['id']}").status_code == 404


def test_uploaded_corpora_beyond_the_bound_drop_the_least_recently_used(server):
    ids = [
        post(server, "/v1/contexts", json={"documents": [{"text": DOCS[i]}]}).json()["id"]
        for i in range(3)
    ]
    assert metric(server, "parallelcomp_uploaded_contexts") == 2
    for context_id, status in zip(ids, [404, 200, 200], strict=True):
        response = post(server, "/v1/chat/completions", json=chat_body(context_id=context_id))
        assert response.status_code == status, response.text
    for context_id in ids[1:]:
        httpx.delete(f"{server.url}/v1/contexts/{context_id}")


def test_tool_calls_round_trip(client, engine):
    forced = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=160
    )
    [choice] = forced.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert set(arguments) == {"city"} and len(arguments["city"]) <= 8
    expected = engine.chat(ASK, tools=[WEATHER], tool_choice="required", max_new_tokens=160)
    assert expected.tool_calls[0].arguments == arguments

    turns = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=turns, tools=[WEATHER], tool_choice="none", max_tokens=8
    )
    expected = engine.chat(turns, tools=[WEATHER], tool_choice="none", max_new_tokens=8)
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].finish_reason == "length"

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=160,
            stream=True,
        )
    )
    calls = [
        c for chunk in chunks if chunk.choices for c in chunk.choices[0].delta.tool_calls or []
    ]
    assert [c.function.name for c in calls] == ["get_weather"] and calls[0].index == 0
    assert json.loads(calls[0].function.arguments) == arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_stream_with_tools_sends_the_text_as_it_comes_then_the_calls(client, engine):
    with ScriptedAnswer(engine.model, engine.tokenizer, TEXT_THEN_CLOCK_CALL):
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "What time is it?"}],
                tools=[{"type": "function", "function": CLOCK_TOOL}],
                max_tokens=64,
                stream=True,
            )
        )
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    texts = [delta.content for delta in deltas if delta.content]
    assert "".join(texts) == "Let me look.\n" and len(texts) > 2
    assert not any("<" in text for text in texts)
    called = [index for index, delta in enumerate(deltas) if delta.tool_calls]
    assert len(called) == 1 and all(not delta.content for delta in deltas[called[0] :])
    last_text = max(index for index, delta in enumerate(deltas) if delta.content)
    assert last_text < called[0]
    [call] = deltas[called[0]].tool_calls
    assert call.index == 0 and call.function.name == "get_time" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# -- bad input ------------------------------------------------------------------------------

HUGE = "x" * (100 * 1024)


def chunked(data: bytes):
    for start in range(0, len(data), 8192):
        yield data[start : start + 8192]


BAD_REQUESTS = {
    "malformed JSON": (
        dict(
            content=b'{"model": "tiny-llama", "messages": [',
            headers={"content-type": "application/json"},
        ),
        400,
        "invalid_json",
        None,
    ),
    "negative max_tokens": (
        dict(json=chat_body(max_tokens=-1)),
        400,
        "invalid_value",
        "max_tokens",
    ),
    "no messages": (dict(json=chat_body(messages=[])), 400, "invalid_value", "messages"),
    "unknown role": (
        dict(json=chat_body(messages=[{"role": "robot", "content": "hi"}])),
        400,
        "invalid_value",
        "messages.0.role",
    ),
    "unknown model": (dict(json=chat_body(model="gpt-4o")), 404, "model_not_found", "model"),
    "body over the limit, declared": (
        dict(json=chat_body(messages=[{"role": "user", "content": HUGE}])),
        413,
        "request_too_large",
        None,
    ),
    "body over the limit, chunked": (
        dict(
            content=chunked(
                json.dumps(chat_body(messages=[{"role": "user", "content": HUGE}])).encode()
            ),
            headers={"content-type": "application/json"},
        ),
        413,
        "request_too_large",
        None,
    ),
    "documents and context_id": (
        dict(json=chat_body(documents=[{"text": "a"}], context_id="ctx-1")),
        400,
        "invalid_value",
        None,
    ),
    "unknown context": (
        dict(json=chat_body(context_id="ctx-nope")),
        404,
        "context_not_found",
        "context_id",
    ),
    "engine refuses a setting": (dict(json=chat_body(seed=-1)), 400, "invalid_input", None),
    "engine refuses the tools": (
        dict(json=chat_body(tools=[WEATHER], tool_choice="get_time")),
        400,
        "invalid_input",
        None,
    ),
    "context over max_context_tokens": (
        dict(json=chat_body(documents=[{"text": text_of_tokens(30_000)}])),
        400,
        "context_length_exceeded",
        None,
    ),
    "n over 1": (dict(json=chat_body(n=2)), 400, "invalid_value", "n"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(server, engine, case):
    request, status, code, param = BAD_REQUESTS[case]
    prefills = count_prefills(engine.model, min_width=0)
    response = post(server, "/v1/chat/completions", **request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code and error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert prefills == [], "the model ran for a refused request"
    check_serving(server, engine)


def test_unknown_routes_and_methods_get_openai_errors(server):
    missing = httpx.get(server.url + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(server.url + "/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_the_api_key_guards_every_route_but_health(keyed_server, engine):
    url = keyed_server.url
    assert httpx.get(url + "/health").json() == {"status": "ok", "queue_depth": 0, "busy": False}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        for path in ("/v1/models", "/metrics"):
            refused = httpx.get(url + path, headers=headers)
            assert refused.status_code == 401, (path, headers)
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert refused.headers["www-authenticate"] == "Bearer"
        refused = httpx.post(url + "/v1/chat/completions", json=chat_body(), headers=headers)
        assert refused.status_code == 401
    keyed = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    reply = keyed.chat.completions.create(model=MODEL, messages=ASK, max_tokens=6)
    assert reply.choices[0].message.content == engine.chat(ASK, max_new_tokens=6).text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="sk-other", max_retries=0).models.list()


def assert_decoding_stopped(engine, shapes, asked: int) -> None:
    """The engine goes idle soon after the client left, short of half the `asked` tokens, and
    runs no forward pass afterwards."""
    deadline = time.monotonic() + 10
    while engine.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.busy
    steps = len(shapes)
    assert steps < asked // 2, f"{steps} forward passes: the request ran on after the client left"
    time.sleep(0.2)
    assert len(shapes) == steps


def test_a_client_leaving_a_stream_cancels_its_request(server, engine):
    long = [{"role": "user", "content": "Tell me a long story."}]
    assert engine.chat(long, max_new_tokens=600).finish_reason == "length"
    shapes = forward_shapes(engine.model)
    body = chat_body(messages=long, max_tokens=600, stream=True)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        while '"role":null' not in next(lines):
            pass
        assert engine.busy
    assert_decoding_stopped(engine, shapes, 600)
    check_serving(server, engine)


def test_a_client_leaving_before_a_whole_answer_cancels_its_request(server, engine):
    long = [{"role": "user", "content": "Tell me a long story."}]
    shapes = forward_shapes(engine.model)
    body = chat_body(messages=long, max_tokens=1500)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=0.2)
    assert_decoding_stopped(engine, shapes, 1500)
    check_serving(server, engine)


def test_a_request_out_of_time_is_a_408_whole_and_an_error_event_in_a_stream():
    hurried = tiny_engine(window=2048, request_timeout_s=0.5)
    long = [{"role": "user", "content": "Tell me a long story."}]
    body = {"model": MODEL, "messages": long, "max_tokens": 1500}
    with RunningServer(create_app(hurried, ServerSettings(model_name=MODEL))) as server:
        whole = post(server, "/v1/chat/completions", json=body)
        assert whole.status_code == 408, whole.text
        assert whole.json()["error"]["code"] == "request_timeout"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIError) as failed:
            for _ in client.chat.completions.create(**body, stream=True):
                pass
        assert failed.value.code == "request_timeout" and "longer than 0.5 s" in str(failed.value)
        assert post(server, "/v1/chat/completions", json=chat_body()).status_code == 200


def test_64_concurrent_clients_get_answers_or_429s(server, engine):
    questions = [f"Question number {index}?" for index in range(4)]
    documents = [{"text": text} for text in DOCS[:2]]
    expected = {
        q: engine.chat([{"role": "user", "content": q}], context=DOCS[:2], max_new_tokens=8).text
        for q in questions
    }

    async def ask(http: httpx.AsyncClient, question: str) -> tuple[int, str | None]:
        body = chat_body(
            messages=[{"role": "user", "content": question}], documents=documents, max_tokens=8
        )
        response = await http.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            return response.status_code, response.json()["error"]["code"]
        return 200, response.json()["choices"][0]["message"]["content"]

    async def crowd() -> list[tuple[str, tuple[int, str | None]]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            asked = [questions[index % 4] for index in range(64)]
            return list(zip(asked, await asyncio.gather(*(ask(http, q) for q in asked))))

    results = asyncio.run(crowd())
    statuses = [status for _, (status, _) in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
    for question, (status, content) in results:
        assert content == (expected[question] if status == 200 else "engine_busy")
    assert metric(
        server, "parallelcomp_requests_total", route="/v1/chat/completions", status="429"
    ) >= statuses.count(429)
    check_serving(server, engine)


# -- health, metrics, command line ----------------------------------------------------------


def test_metrics_count_requests_tokens_and_time_to_first_token(server, engine):
    labels = {"route": "/v1/chat/completions", "status": "200"}
    before = {
        "requests": metric(server, "parallelcomp_requests_total", **labels),
        "out": metric(server, "parallelcomp_completion_tokens_total"),
        "in": metric(server, "parallelcomp_prompt_tokens_total"),
        "ttft": metric(server, "parallelcomp_time_to_first_token_seconds_count"),
    }
    reply = post(server, "/v1/chat/completions", json=chat_body()).json()
    assert metric(server, "parallelcomp_requests_total", **labels) == before["requests"] + 1
    assert metric(server, "parallelcomp_completion_tokens_total") == before["out"] + 6
    assert (
        metric(server, "parallelcomp_prompt_tokens_total")
        == before["in"] + reply["usage"]["prompt_tokens"]
    )
    assert metric(server, "parallelcomp_time_to_first_token_seconds_count") == before["ttft"] + 1
    assert metric(server, "parallelcomp_queue_depth") == 0
    httpx.get(server.url + "/v1/nothing")
    assert metric(server, "parallelcomp_requests_total", route="unmatched", status="404") >= 1
    text = httpx.get(server.url + "/metrics").text
    assert "python_gc_objects_collected_total" not in text, "the global registry leaked in"


def test_importing_the_package_does_not_import_fastapi():
    code = "import sys, parallelcomp_llm; assert 'fastapi' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "parallelcomp_llm.server")
    assert main(["serve"]) == 2
    error = capsys.readouterr().err
    assert "fastapi" in error and "pip install 'parallelcomp-llm[server]'" in error


def test_serve_refuses_bad_settings_before_loading_a_model(capsys):
    assert main(["serve", "--model", "/nonexistent/model", "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err


def test_parallelcomp_serve_answers_over_http(tmp_path):
    folder = tiny_model_folder(tmp_path / "tiny-model", window=2048)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = os.environ | {"PARALLELCOMP_API_KEY": KEY}
    command = [sys.executable, "-m", "parallelcomp_llm.cli", "serve", "--model", str(folder)]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"], env=environment
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        keyed = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert [card.id for card in keyed.models.list().data] == ["tiny-model"]
        reply = keyed.chat.completions.create(model="tiny-model", messages=ASK, max_tokens=3)
        assert reply.usage.completion_tokens == 3
    finally:
        process.terminate()
        process.wait(30)
