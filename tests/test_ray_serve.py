"""The app on Ray Serve (`parallelcomp_llm.server.ray_serve`), over a real local Ray cluster on the
CPU with two replicas of a tiny model behind the corpus router: answers over HTTP equal the
in-process app's, whole and streamed; a corpus asked about again reaches the replica that
encoded it (and is answered from its encoding), a new corpus the other replica; an uploaded
corpus's chats reach the replica that holds it."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

ray = pytest.importorskip("ray")

import httpx  # noqa: E402
from ray import serve  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine  # noqa: E402
from parallelcomp_llm.server import ServerSettings, create_app  # noqa: E402
from parallelcomp_llm.server.ray_serve import (  # noqa: E402
    REPLICA_HEADER,
    ServeOptions,
    build_app,
    corpus_key,
)
from parallelcomp_llm.testing import TINY_SETTINGS, text_of_tokens, tiny_model_folder  # noqa: E402

pytestmark = pytest.mark.serving

CORPORA = [[text_of_tokens(300, seed=10 * c + d) for d in range(3)] for c in range(3)]
CONFIG = ParallelCompConfig(**TINY_SETTINGS, dtype="float32", device="cpu")
SETTLE_S = 1.5
"""Time for a replica's new corpus key to reach Serve's router (pushed every 0.1 s)."""


def chat(corpus: list[str], question: str, **more) -> dict:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": question}],
        "documents": [{"text": text} for text in corpus],
        "max_tokens": 8,
        **more,
    }


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def settings(model_path):
    return ServerSettings(model=str(model_path), model_name="tiny")


@pytest.fixture(scope="module")
def served(settings):
    """The Serve app's URL: two replicas (0.5 CPU each) behind the corpus router."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = ServeOptions(min_replicas=2, max_replicas=2, gpus_per_replica=0, cpus_per_replica=0.5)
    serve.run(build_app(settings, CONFIG, options), name="parallelcomp", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(model_path, settings):
    engine = ParallelCompEngine.from_pretrained(model_path, CONFIG)
    with TestClient(create_app(engine, settings)) as client:
        yield client


def test_corpus_key_is_the_documents_or_the_uploaded_id():
    body = json.dumps(chat(CORPORA[0], "Which?")).encode()
    again = json.dumps(chat(CORPORA[0], "Another question?")).encode()
    other = json.dumps(chat(CORPORA[1], "Which?")).encode()
    key = corpus_key("POST", "/v1/chat/completions", body)
    assert key is not None and key == corpus_key("POST", "/v1/chat/completions", again)
    assert key != corpus_key("POST", "/v1/chat/completions", other)
    by_id = json.dumps({"context_id": "ctx-1", "messages": []}).encode()
    assert corpus_key("POST", "/v1/chat/completions", by_id) == "ctx-1"
    assert corpus_key("POST", "/v1/chat/completions", b"not json") is None
    assert corpus_key("GET", "/v1/models", b"") is None


def test_answers_equal_the_in_process_app_and_follow_their_corpus(served, in_process):
    with httpx.Client(base_url=served, timeout=120) as client:
        first = client.post("/v1/chat/completions", json=chat(CORPORA[0], "Which one?"))
        assert first.status_code == 200, first.text
        expected = in_process.post("/v1/chat/completions", json=chat(CORPORA[0], "Which one?"))
        content = first.json()["choices"][0]["message"]["content"]
        assert content == expected.json()["choices"][0]["message"]["content"]
        assert first.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        time.sleep(SETTLE_S)

        again = client.post("/v1/chat/completions", json=chat(CORPORA[0], "What else?"))
        assert again.status_code == 200, again.text
        assert again.headers[REPLICA_HEADER] == first.headers[REPLICA_HEADER]
        assert again.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        expected = in_process.post("/v1/chat/completions", json=chat(CORPORA[0], "What else?"))
        content = again.json()["choices"][0]["message"]["content"]
        assert content == expected.json()["choices"][0]["message"]["content"]

        other = client.post("/v1/chat/completions", json=chat(CORPORA[1], "Which one?"))
        assert other.status_code == 200, other.text
        assert other.headers[REPLICA_HEADER] != first.headers[REPLICA_HEADER]

        streamed = ""
        body = chat(CORPORA[0], "Which one?", stream=True)
        with client.stream("POST", "/v1/chat/completions", json=body) as events:
            assert events.status_code == 200
            assert events.headers[REPLICA_HEADER] == first.headers[REPLICA_HEADER]
            for line in events.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    for choice in json.loads(line.removeprefix("data: "))["choices"]:
                        streamed += choice["delta"].get("content") or ""
        assert streamed == first.json()["choices"][0]["message"]["content"]


def test_chats_over_an_uploaded_corpus_reach_the_replica_that_holds_it(served):
    with httpx.Client(base_url=served, timeout=120) as client:
        upload = client.post("/v1/contexts", json={"documents": [{"text": CORPORA[2][0]}]})
        assert upload.status_code == 200, upload.text
        time.sleep(SETTLE_S)
        for question in ("Which one?", "What else?"):
            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": question}],
                "context_id": upload.json()["id"],
                "max_tokens": 4,
            }
            answer = client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.headers[REPLICA_HEADER] == upload.headers[REPLICA_HEADER]
