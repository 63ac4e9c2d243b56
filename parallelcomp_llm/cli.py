"""The `parallelcomp` command: `parallelcomp ask [--model M] --context FILE|DIR|- ... "QUESTION"`
answers a question over text files; `parallelcomp serve [--model M] [--host H] [--port P]` runs an
OpenAI-compatible HTTP server (the `server` extra); `parallelcomp haystack --tokens N` prints a
pass-key haystack.

Every input is checked before a model loads; a user mistake prints one line
(`parallelcomp: error: ...`) and exits with status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ParallelCompConfig
from .decode_settings import DecodeSettings
from .errors import InvalidInputError, ParallelCompError
from .requests import documents_of

if TYPE_CHECKING:
    from .engine import ParallelCompEngine

API_KEY_ENV = "PARALLELCOMP_API_KEY"
"""Environment variable `serve` reads its API key from when `--api-key` is not given."""
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

MAX_FILE_BYTES = 64 * 2**20
"""Largest context file read (262,144 tokens, the default `max_context_tokens`, are about 1 MB of
English text); a longer one, or an endless one such as /dev/zero, is refused."""


def _read_bytes(path: str) -> bytes:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise InvalidInputError(f"cannot read context file {path!r}: {error.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        name = "standard input" if path == "-" else repr(path)
        raise InvalidInputError(f"context {name} is longer than {MAX_FILE_BYTES} bytes")
    return data


def _read_file(path: str) -> str:
    try:
        return _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as error:
        name = "standard input" if path == "-" else repr(path)
        raise InvalidInputError(
            f"context {name} is not UTF-8 text (byte {error.start}): convert it to UTF-8 first"
        ) from None


def _utf8_text(data: bytes) -> str | None:
    """`data` decoded, or None unless it is UTF-8 text (decodable, with no NUL byte)."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _files_under(folder: Path) -> Iterator[Path]:
    """The files under `folder`, recursively, leaving out hidden files and folders."""

    def refuse(error: OSError) -> None:
        raise InvalidInputError(
            f"cannot read context directory {error.filename!r}: {error.strerror}"
        )

    for root, folders, files in os.walk(folder, onerror=refuse):
        folders[:] = [name for name in folders if not name.startswith(".")]
        yield from (Path(root, name) for name in files if not name.startswith("."))


def _read_directory(folder: Path) -> list[str]:
    """The UTF-8 text files under `folder`, sorted by path; other files are skipped with a warning
    on standard error."""
    documents = []
    for path in sorted(_files_under(folder)):
        text = _utf8_text(_read_bytes(str(path)))
        if text is None:
            print(f"parallelcomp: warning: skipping {path} (not UTF-8 text)", file=sys.stderr)
        else:
            documents.append(text)
    if not documents:
        raise InvalidInputError(f"context directory {str(folder)!r} holds no UTF-8 text file")
    return documents


def _documents(paths: list[str]) -> list[str]:
    """The documents of the `--context` arguments, in order, checked to hold some text."""
    documents: list[str] = []
    for path in paths:
        if path != "-" and Path(path).is_dir():
            documents.extend(_read_directory(Path(path)))
        else:
            documents.append(_read_file(path))
    return documents_of(documents)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parallelcomp", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer a question over one or more text files")
    ask.set_defaults(run=_ask)
    ask.add_argument("question")
    ask.add_argument(
        "--context",
        action="append",
        required=True,
        metavar="FILE|DIR|-",
        help="a UTF-8 text file, one document; a directory: each UTF-8 text file under it, "
        "recursively, in path order, is a document (hidden files and folders left out, other "
        "files skipped with a warning); '-' reads standard input; repeatable",
    )
    _add_engine_options(ask)
    ask.add_argument("--max-new-tokens", type=int, default=None)
    ask.add_argument("--temperature", type=float, default=None, help="0 (the default): greedy")
    ask.add_argument("--top-p", type=float, default=None)
    ask.add_argument("--top-k", type=int, default=None)
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--stop", action="append", default=None, help="stop string; repeatable")
    ask.add_argument(
        "--stats",
        action="store_true",
        help="print the answer's statistics and the engine's settings as JSON to stderr",
    )
    serve = commands.add_parser(
        "serve",
        help="run an OpenAI-compatible HTTP server (needs the server extra)",
        description="Serve /v1/models, /v1/chat/completions (with documents or an uploaded "
        "context), /v1/completions, /v1/contexts, /health and /metrics; see docs/serving.md.",
    )
    serve.set_defaults(run=_serve)
    _add_engine_options(serve)
    serve.add_argument("--host", default=None, help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to bind (default: 8000)")
    serve.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"require 'Authorization: Bearer KEY' on every route but /health (default: "
        f"${API_KEY_ENV}, else no key)",
    )
    serve.add_argument(
        "--served-model-name",
        default=None,
        help="the name clients ask for (default: the model folder's name, or the Hub name)",
    )
    serve.add_argument("--max-body-bytes", type=int, default=None, help="largest request body")
    serve.add_argument("--max-contexts", type=int, default=None, help="uploaded corpora kept")
    serve.add_argument("--max-waiting-requests", type=int, default=None, help="queue bound")
    serve.add_argument("--max-batch-requests", type=int, default=None)
    serve.add_argument("--request-timeout-s", type=float, default=None)
    serve.add_argument("--max-context-tokens", type=int, default=None)
    serve.add_argument("--max-new-tokens-limit", type=int, default=None)
    serve.add_argument("--log-level", default="info", choices=sorted(_LOG_LEVELS))
    haystack = commands.add_parser(
        "haystack",
        help="print a pass-key haystack to standard output (its key goes to standard error)",
        description="Print filler text of about --tokens tokens with a five-digit pass key "
        "hidden at --depth; ask it 'What is the pass key? Answer with the number only.'",
    )
    haystack.set_defaults(run=_haystack)
    haystack.add_argument("--tokens", type=int, required=True, help="length in model tokens")
    haystack.add_argument("--depth", type=float, default=0.5, help="0 (start) to 1 (end)")
    haystack.add_argument("--seed", type=int, default=0, help="draws the key (default: 0)")
    haystack.add_argument("--key", type=int, default=None, help="the key itself, not drawn")
    haystack.add_argument(
        "--model", help="whose tokenizer counts the tokens (default: SmolLM2-135M-Instruct)"
    )
    return parser


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The model and the engine settings, which `ask` and `serve` share (`_config`)."""
    parser.add_argument("--model", help="model name or path (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--keep-chunks", type=float, default=None, help="count (>= 1) or fraction")
    parser.add_argument(
        "--kv-budget",
        type=int,
        default=None,
        help="KV entries the answer attends to, shared by the kept chunks",
    )
    parser.add_argument("--no-kv-eviction", action="store_true", help="keep whole kept chunks")
    parser.add_argument("--chunk-tokens", type=int, default=None)
    parser.add_argument("--chunk-batch-size", type=int, default=None)
    parser.add_argument(
        "--scoring-heads",
        nargs="+",
        type=_head,
        default=None,
        metavar="LAYER:KV_HEAD",
        help="score chunks by these retrieval heads (chunk_scoring='heads'), e.g. 17:1 for the "
        "default model: the passes stop after the deepest head's layer",
    )
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument(
        "--device-map",
        default=None,
        help="spread the model with accelerate: auto, balanced, sequential, or one device "
        "(leave --device out)",
    )
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit of --model")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run the model repository's own code"
    )


def _head(text: str) -> tuple[int, int]:
    """A `LAYER:KV_HEAD` pair of `--scoring-heads`."""
    layer, colon, head = text.partition(":")
    if not (colon and layer.isdigit() and head.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not LAYER:KV_HEAD (two whole numbers)")
    return int(layer), int(head)


def _config(args: argparse.Namespace, **more: object) -> ParallelCompConfig:
    """The engine settings of the shared options, with `more` settings (None: not given)."""
    overrides = {
        "chunk_tokens": args.chunk_tokens,
        "chunk_batch_size": args.chunk_batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "kv_budget": args.kv_budget,
        **more,
    }
    if args.keep_chunks is not None:
        keep = args.keep_chunks
        whole = math.isfinite(keep) and keep >= 1 and keep == int(keep)
        overrides["keep_chunks"] = int(keep) if whole else keep
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if args.no_kv_eviction:
        overrides["kv_budget"] = None
    if args.scoring_heads:
        overrides |= {"chunk_scoring": "heads", "scoring_heads": args.scoring_heads}
    return ParallelCompConfig(**overrides)


def _load_engine(args: argparse.Namespace, config: ParallelCompConfig) -> ParallelCompEngine:
    """The engine over `--model` (a name or path), or over the default model, loaded with the
    loading options given (a Hub token comes from `HF_TOKEN` or the saved login)."""
    from .engine import ParallelCompEngine

    given = {
        "device_map": args.device_map,
        "revision": args.revision,
        "trust_remote_code": args.trust_remote_code or None,
    }
    options = {name: value for name, value in given.items() if value is not None}
    if args.model:
        return ParallelCompEngine.from_pretrained(args.model, config, load_options=options)
    return ParallelCompEngine.default(config, load_options=options)


def _ask(args: argparse.Namespace) -> None:
    if not args.question.strip():
        raise InvalidInputError("question is empty")
    documents = _documents(args.context)
    given = {
        "max_new_tokens": args.max_new_tokens,
        "stop": args.stop,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
    }
    settings = DecodeSettings.from_fields(given, {})
    engine = _load_engine(args, _config(args))
    stream = engine.stream(documents, args.question, settings, progress=True)
    with closing(stream):
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats and stream.answer is not None:
        report = asdict(stream.answer.stats) | {"engine": engine.describe()}
        print(json.dumps(report, indent=2), file=sys.stderr)


def _serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from .server import ServerSettings, create_app
    except ImportError as error:
        raise ParallelCompError(str(error)) from None

    given = {
        "host": args.host,
        "port": args.port,
        "api_key": args.api_key,
        "model": args.model,
        "model_name": args.served_model_name,
        "max_body_bytes": args.max_body_bytes,
        "max_contexts": args.max_contexts,
    }
    settings = ServerSettings(**{key: value for key, value in given.items() if value is not None})
    config = _config(
        args,
        max_waiting_requests=args.max_waiting_requests,
        max_batch_requests=args.max_batch_requests,
        request_timeout_s=args.request_timeout_s,
        max_context_tokens=args.max_context_tokens,
        max_new_tokens_limit=args.max_new_tokens_limit,
    )
    engine = _load_engine(args, config)
    app = create_app(engine, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)


def _haystack(args: argparse.Namespace) -> None:
    from .haystack import passkey_haystack, random_key
    from .models import load_tokenizer

    @functools.cache
    def tokenizer():
        # Loaded at the first count, once passkey_haystack has checked its arguments.
        if args.model:
            return load_tokenizer(args.model)
        from .default_model import default_model_path

        return load_tokenizer(default_model_path())

    def count(text: str) -> int:
        return len(tokenizer()(text, add_special_tokens=False)["input_ids"])

    key = args.key if args.key is not None else random_key(args.seed)
    sys.stdout.write(passkey_haystack(args.tokens, args.depth, key, count))
    print(f"parallelcomp: pass key {key} at depth {args.depth}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
        sys.stdout.flush()  # a reader that left is found here, not at exit
    except ParallelCompError as error:
        print(f"parallelcomp: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of standard output left (`| head`). Python's recipe: send what is still
        # buffered to devnull, so that the flush at exit raises no second error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
