"""The `parallelcomp` command: `parallelcomp ask [--model M] --context FILE ... "QUESTION"`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .decode_settings import DecodeSettings
from .errors import InvalidInputError, ParallelCompError


def _read_context(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as error:
        raise InvalidInputError(f"cannot read context file {path!r}: {error.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        name = "standard input" if path == "-" else repr(path)
        raise InvalidInputError(
            f"context {name} is not UTF-8 text (byte {error.start}): convert it to UTF-8 first"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parallelcomp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer a question over one or more text files")
    ask.add_argument("question")
    ask.add_argument(
        "--context",
        action="append",
        required=True,
        metavar="FILE",
        help="a UTF-8 text file, each one a document ('-' reads standard input); repeatable",
    )
    ask.add_argument("--model", help="model name or path (default: SmolLM2-135M-Instruct)")
    ask.add_argument("--max-new-tokens", type=int, default=None)
    ask.add_argument("--temperature", type=float, default=None, help="0 (the default): greedy")
    ask.add_argument("--top-p", type=float, default=None)
    ask.add_argument("--top-k", type=int, default=None)
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--stop", action="append", default=None, help="stop string; repeatable")
    ask.add_argument("--keep-chunks", type=float, default=None, help="count (>= 1) or fraction")
    ask.add_argument(
        "--kv-budget",
        type=int,
        default=None,
        help="KV entries the answer attends to, shared by the kept chunks",
    )
    ask.add_argument("--no-kv-eviction", action="store_true", help="keep whole kept chunks")
    ask.add_argument("--chunk-tokens", type=int, default=None)
    ask.add_argument("--chunk-batch-size", type=int, default=None)
    ask.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    ask.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    ask.add_argument(
        "--stats",
        action="store_true",
        help="print the answer's statistics and the engine's settings as JSON to stderr",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    overrides = {
        "chunk_tokens": args.chunk_tokens,
        "chunk_batch_size": args.chunk_batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "kv_budget": args.kv_budget,
    }
    if args.keep_chunks is not None:
        keep = args.keep_chunks
        overrides["keep_chunks"] = int(keep) if keep >= 1 and keep == int(keep) else keep
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if args.no_kv_eviction:
        overrides["kv_budget"] = None
    return overrides


def _ask(args: argparse.Namespace) -> None:
    from .engine import ParallelCompEngine

    given = {
        "max_new_tokens": args.max_new_tokens,
        "stop": args.stop,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
    }
    settings = DecodeSettings.from_fields(given, {})
    documents = [_read_context(path) for path in args.context]
    overrides = _overrides(args)
    if args.model:
        engine = ParallelCompEngine.from_pretrained(args.model, **overrides)
    else:
        engine = ParallelCompEngine.default(**overrides)
    stream = engine.stream(documents, args.question, settings, progress=True)
    for delta in stream:
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats and stream.answer is not None:
        report = asdict(stream.answer.stats) | {"engine": engine.describe()}
        print(json.dumps(report, indent=2), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _ask(args)
    except ParallelCompError as error:
        print(f"parallelcomp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
