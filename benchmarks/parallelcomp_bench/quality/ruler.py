"""RULER's 13 synthetic long-context tasks, generated for the quality harness.

The recipes and standard configurations are RULER's (Hsieh et al., 2024; NVIDIA/RULER,
`scripts/synthetic.yaml` and `scripts/data/synthetic/`): needle-in-a-haystack (niah_*), variable
tracking (vt), common and frequent words extraction (cwe, fwe) and question answering over SQuAD
and HotpotQA paragraphs among distractors (qa_1, qa_2). Each item fills `length` tokens of the
target model: prompt template, context, question and the answer budget `max_new_tokens`.

Where this differs from RULER:
- RULER's instruction and answer prefix follow the context, in `Item.question` (our engine takes
  the context first and answers in a fresh assistant turn); the answer prefix becomes an
  instruction on the form of the answer.
- The niah tasks generate at most 64 tokens (RULER: 128), enough for four 7-digit numbers or one
  uuid, to keep runs of our 135M default model short; the others keep RULER's budgets.
- The one-shot examples of vt and cwe open the context.
- qa items of one seed ask the same questions at every length; cwe draws adjective-noun pairs
  once the word lists run out (RULER switches to another word list, which is not on PyPI).
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import re
import string
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from transformers import PreTrainedTokenizerBase

from parallelcomp_llm.prompt import PromptBuilder

from . import data
from .items import Item

TASKS = (
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
    "cwe",
    "fwe",
    "qa_1",
    "qa_2",
)
MAX_NEW_TOKENS = {task: 64 for task in TASKS if task.startswith("niah")} | {
    "vt": 30,
    "cwe": 120,
    "fwe": 50,
    "qa_1": 32,
    "qa_2": 32,
    "needle": 32,
}


TokenCount = Callable[[str], int]
"""Tokens of a piece of context, as the target model's tokenizer counts them."""


class PromptSizer(Protocol):
    """Token counts in the target model's tokenizer."""

    def count(self, text: str) -> int:
        """Tokens of `text`, without special tokens."""
        ...

    def overhead(self, question: str) -> int:
        """Tokens of the prompt besides the context: the template around it and the question
        block (question, end of turn, answer header)."""
        ...


class EngineSizer:
    """`PromptSizer` for ParallelComp prompts: `prefix + context + question block`."""

    def __init__(self, prompts: PromptBuilder) -> None:
        self.prompts = prompts

    @classmethod
    def for_tokenizer(
        cls, tokenizer: PreTrainedTokenizerBase, use_chat_template: bool | None = None
    ) -> EngineSizer:
        """The sizer of an engine over `tokenizer`, without loading the model."""
        return cls(PromptBuilder(tokenizer, use_chat_template))

    def count(self, text: str) -> int:
        return len(self.prompts.encode(text))

    def overhead(self, question: str) -> int:
        return len(self.prompts.prefix_ids) + len(self.prompts.question_ids(question))


def ruler_items(
    task: str, length: int, indices: Iterable[int], seed: int, sizer: PromptSizer
) -> list[Item]:
    """The items `indices` of RULER task `task`, each filling `length` tokens as `sizer` counts
    them.

    Item `index` depends only on (task, length, seed, index).
    """
    if task not in TASKS:
        raise ValueError(f"unknown RULER task {task!r}; tasks: {', '.join(TASKS)}")
    tokens = functools.cache(sizer.count)  # context pieces come again and again
    return [_item(_Request(task, length, seed, index), sizer, tokens) for index in indices]


@dataclass(frozen=True)
class _Request:
    task: str
    length: int
    seed: int
    index: int
    depth: float | None = None

    @property
    def name(self) -> str:
        return f"{self.seed}/{self.task}/{self.length}/{self.index}"


@dataclass(frozen=True)
class _Context:
    text: str
    depth: float | None = None


@dataclass(frozen=True)
class _Draft:
    """An item's question and references, and how to lay out its context in `room` tokens."""

    question: str
    references: tuple[str, ...]
    compose: Callable[[int, random.Random], _Context]


_ATTEMPTS = 4
_PATIENCE = 64  # random pieces in a row that do not fit before the context counts as full


def _item(request: _Request, sizer: PromptSizer, tokens: TokenCount) -> Item:
    """Lay out the context by the pieces' token counts, check it with one count, and lay it out
    again in less room if the pieces joined took more tokens than their counts summed."""
    task = request.task
    draft = _DRAFTERS[task](request, random.Random(request.name), tokens)
    max_new_tokens = MAX_NEW_TOKENS[task]
    room = request.length - sizer.overhead(draft.question) - max_new_tokens
    target = room
    for _ in range(_ATTEMPTS):
        context = draft.compose(target, random.Random(request.name + "/context"))
        used = sizer.count(context.text)
        if used <= room:
            return Item(
                suite="ruler" if task in TASKS else task,
                task=task,
                length=request.length,
                seed=request.seed,
                index=request.index,
                context=context.text,
                question=draft.question,
                references=draft.references,
                match="any" if task.startswith("qa") else "all",
                max_new_tokens=max_new_tokens,
                depth=context.depth if request.depth is None else request.depth,
            )
        target -= used - room
    raise RuntimeError(f"could not fit {request.name} into {room} context tokens")


# Pieces of a context: (text, tokens of the text after its separator).
_Pieces = list[tuple[str, int]]
_Part = TypeVar("_Part")


def _take(
    parts: Iterable[_Part], room: int, cost: Callable[[_Part, int], int], patience: int = 1
) -> list[tuple[_Part, int]]:
    """Parts from `parts`, in order, with their costs, while they fit in `room`; a part that does
    not fit is skipped until `patience` in a row do not (1 for parts that must go on in order,
    more for parts drawn at random). `cost(part, taken)` is in tokens, `taken` the number of parts
    taken before it."""
    taken = []
    misses = 0
    for part in parts:
        part_cost = cost(part, len(taken))
        if part_cost <= room:
            taken.append((part, part_cost))
            room -= part_cost
            misses = 0
        else:
            misses += 1
            if misses == patience:
                break
    return taken


def _after(separator: str, tokens: TokenCount) -> Callable[[str, int], int]:
    """The cost of a text that follows `separator`."""
    return lambda text, _: tokens(separator + text)


def _insert(filler: _Pieces, inserts: Iterable[tuple[int, tuple[str, int]]]) -> _Pieces:
    """`filler` with each insert placed before the filler piece at its index (sorted indices)."""
    pieces: _Pieces = []
    start = 0
    for position, piece in inserts:
        pieces += filler[start:position]
        pieces.append(piece)
        start = position
    return pieces + filler[start:]


def _join(pieces: _Pieces, separator: str, marked: Collection[str] = ()) -> _Context:
    """The context of `pieces`; its depth is the token share before the first marked piece."""
    total = sum(cost for _, cost in pieces)
    before = 0
    depth = None
    for text, cost in pieces:
        if text in marked:
            depth = before / total
            break
        before += cost
    return _Context(separator.join(text for text, _ in pieces), depth)


def _too_short(room: int, what: str) -> ValueError:
    return ValueError(f"{room} context tokens are too few for {what}; use a longer length")


def _fresh(draw: Callable[[], str], taken: set[str]) -> str:
    """A value from `draw` not in `taken`, then added to it."""
    value = draw()
    while value in taken:
        value = draw()
    taken.add(value)
    return value


# --- needle in a haystack --------------------------------------------------------------------

_Kind = Literal["words", "numbers", "uuids"]


@dataclass(frozen=True)
class _NiahSpec:
    haystack: Literal["noise", "essay", "needle"]
    key_kind: _Kind
    value_kind: _Kind
    keys: int = 1
    values: int = 1
    queries: int = 1


_NIAH = {
    "niah_single_1": _NiahSpec("noise", "words", "numbers"),
    "niah_single_2": _NiahSpec("essay", "words", "numbers"),
    "niah_single_3": _NiahSpec("essay", "words", "uuids"),
    "niah_multikey_1": _NiahSpec("essay", "words", "numbers", keys=4),
    "niah_multikey_2": _NiahSpec("needle", "words", "numbers"),
    "niah_multikey_3": _NiahSpec("needle", "uuids", "uuids"),
    "niah_multivalue": _NiahSpec("essay", "words", "numbers", values=4),
    "niah_multiquery": _NiahSpec("essay", "words", "numbers", keys=4, queries=4),
}
_NEEDLE = "One of the special magic {kind} for {key} is: {value}."
_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
_ESSAY_DEPTHS = tuple(round(100 * step / 39) for step in range(40))  # percent, as RULER's grid


def _random_value(kind: _Kind, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return f"{rng.choice(data.words('adjectives'))}-{rng.choice(data.words('nouns'))}"


@functools.cache
def _essay_sentences() -> tuple[str, ...]:
    return tuple(re.split(r"(?<=[.!?]) ", re.sub(r"\s+", " ", data.essays()).strip()))


def _essay(room: int, tokens: TokenCount) -> _Pieces:
    """The essays from their start, `room` tokens of them: whole sentences, then the words of the
    next sentence that still fit (RULER cuts the essays at a word count)."""
    sentences = _essay_sentences()
    pieces = _take(itertools.cycle(sentences), room, _after(" ", tokens))
    room -= sum(cost for _, cost in pieces)
    words = _take(sentences[len(pieces) % len(sentences)].split(" "), room, _after(" ", tokens))
    if words:
        pieces.append((" ".join(text for text, _ in words), sum(cost for _, cost in words)))
    return pieces


def _niah_question(spec: _NiahSpec, queried: list[str]) -> str:
    query = queried[0] if len(queried) == 1 else ", ".join(queried[:-1]) + ", and " + queried[-1]
    kind = spec.value_kind
    if spec.queries * spec.values == 1:
        one = kind[:-1]
        return (
            f"A special magic {one} is hidden within the text above. What is the special magic "
            f"{one} for {query} mentioned in the text? Answer with the {one} only."
        )
    return (
        f"Some special magic {kind} are hidden within the text above. What are all the special "
        f"magic {kind} for {query} mentioned in the text? Answer with the {kind} only."
    )


def needle_item(length: int, depth: float, seed: int, index: int, sizer: PromptSizer) -> Item:
    """One cell of the needle heat-map (suite and task "needle"): niah_single_2's needle, a word
    key with a 7-digit number, placed at `depth` (0 to 1) of the essays, by whole sentences."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError("depth must be in [0, 1]")
    return _item(
        _Request("needle", length, seed, index, depth), sizer, functools.cache(sizer.count)
    )


def _needle(request: _Request, rng: random.Random, tokens: TokenCount) -> _Draft:
    spec = _NIAH["niah_single_2"]
    key = _random_value(spec.key_kind, rng)
    value = _random_value(spec.value_kind, rng)
    needle = _NEEDLE.format(kind=spec.value_kind, key=key, value=value)

    def compose(room: int, layout: random.Random) -> _Context:
        piece = (needle, tokens(" " + needle))
        filler = _essay(room - piece[1], tokens)
        position = round(len(filler) * request.depth)
        return _join(_insert(filler, [(position, piece)]), " ", {needle})

    return _Draft(_niah_question(spec, [key]), (value,), compose)


def _niah(request: _Request, rng: random.Random, tokens: TokenCount) -> _Draft:
    spec = _NIAH[request.task]
    taken: set[str] = set()
    keys = [_fresh(lambda: _random_value(spec.key_kind, rng), taken) for _ in range(spec.keys)]
    values = [
        [_fresh(lambda: _random_value(spec.value_kind, rng), taken) for _ in range(spec.values)]
        for _ in keys
    ]
    needles = [
        _NEEDLE.format(kind=spec.value_kind, key=key, value=value)
        for key, key_values in zip(keys, values)
        for value in key_values
    ]
    rng.shuffle(needles)
    asked = rng.sample(range(spec.keys), spec.queries)
    answer_needles = {
        _NEEDLE.format(kind=spec.value_kind, key=keys[i], value=value)
        for i in asked
        for value in values[i]
    }
    separator = " " if spec.haystack == "essay" else "\n"

    def distractors(layout: random.Random) -> Iterator[str]:
        used = set(keys)
        while True:
            key = _fresh(lambda: _random_value(spec.key_kind, layout), used)
            value = _random_value(spec.value_kind, layout)
            yield _NEEDLE.format(kind=spec.value_kind, key=key, value=value)

    def compose(room: int, layout: random.Random) -> _Context:
        needle_pieces = [(needle, tokens(separator + needle)) for needle in needles]
        room -= sum(cost for _, cost in needle_pieces)
        if spec.haystack == "essay":
            filler = _essay(room, tokens)
            depths = layout.sample(_ESSAY_DEPTHS, len(needles))
            positions = sorted(len(filler) * depth // 100 for depth in depths)
        else:
            if spec.haystack == "noise":
                filler = _take(itertools.repeat(_NOISE), room, _after(separator, tokens))
            else:
                filler = _take(distractors(layout), room, _after(separator, tokens), _PATIENCE)
            if len(filler) < len(needles):
                raise _too_short(room, request.task)
            positions = sorted(layout.sample(range(len(filler)), len(needles)))
        return _join(_insert(filler, zip(positions, needle_pieces)), separator, answer_needles)

    queried = [keys[i] for i in asked]
    references = tuple(value for i in asked for value in values[i])
    return _Draft(_niah_question(spec, queried), references, compose)


# --- variable tracking -----------------------------------------------------------------------

_VT_HOPS = 4
_VT_EXAMPLE_NOISE = 16  # noise lines of the one-shot example (RULER's is about 500 tokens)


def _vt_question(value: str) -> str:
    return (
        "Track the chain(s) of variable assignment hidden in the text above.\nQuestion: Find all "
        f"variables that are assigned the value {value} in the text above. According to the "
        f"chain(s) of variable assignment in the text above, {_VT_HOPS + 1} variables are "
        f"assigned the value {value}. Answer with their names only."
    )


@dataclass(frozen=True)
class _Chain:
    """Variables assigned one value in turn: VAR A = 12345, VAR B = VAR A, ..."""

    names: tuple[str, ...]
    value: str

    @property
    def lines(self) -> list[str]:
        first = f"VAR {self.names[0]} = {self.value}"
        return [first] + [f"VAR {b} = VAR {a}" for a, b in itertools.pairwise(self.names)]


def _vt_chain(rng: random.Random, letters: int, taken: set[str]) -> _Chain:
    names = tuple(
        _fresh(lambda: "".join(rng.choices(string.ascii_uppercase, k=letters)), taken)
        for _ in range(_VT_HOPS + 1)
    )
    return _Chain(names, str(rng.randint(10000, 99999)))


def _vt_lines(chain: _Chain, noise: int, rng: random.Random) -> list[str]:
    """`noise` noise lines with the chain's lines in order at random places between them."""
    lines = [_NOISE] * noise
    positions = sorted(rng.sample(range(noise), len(chain.names)))
    for offset, (position, line) in enumerate(zip(positions, chain.lines)):
        lines.insert(position + offset, line)
    return lines


def _vt(request: _Request, rng: random.Random, tokens: TokenCount) -> _Draft:
    taken: set[str] = set()
    shown = _vt_chain(rng, 3, taken)
    example = "\n".join(_vt_lines(shown, _VT_EXAMPLE_NOISE, rng))
    example += f"\n{_vt_question(shown.value)}\nAnswer: {' '.join(shown.names)}\n\n"
    chain = _vt_chain(rng, 5, taken)

    def compose(room: int, layout: random.Random) -> _Context:
        room -= tokens(example) + sum(tokens("\n" + line) for line in chain.lines)
        noise = len(_take(itertools.repeat(_NOISE), room, _after("\n", tokens)))
        if noise < len(chain.names):
            raise _too_short(room, request.task)
        return _Context(example + "\n".join(_vt_lines(chain, noise, layout)))

    return _Draft(_vt_question(chain.value), chain.names, compose)


# --- common and frequent words extraction ----------------------------------------------------

_CWE_COMMON = 10
_CWE_QUESTION = (
    "Above is a numbered list of words. In these words, some appear more often than others.\n"
    f"Question: What are the {_CWE_COMMON} most common words in the above list? Answer with a "
    "numbered list of the words only."
)


@functools.cache
def _cwe_pool() -> tuple[str, ...]:
    return tuple(
        sorted({word for kind in ("nouns", "adjectives", "verbs") for word in data.words(kind)})
    )


def _numbered(words: Iterable[str]) -> str:
    return " ".join(f"{number}. {word}" for number, word in enumerate(words, 1))


def _cwe_list(
    words: list[str], common_repeats: int, other_repeats: int, rng: random.Random
) -> list[str]:
    """The first `_CWE_COMMON` words `common_repeats` times, the others `other_repeats` times,
    shuffled."""
    listed = words[:_CWE_COMMON] * common_repeats + words[_CWE_COMMON:] * other_repeats
    rng.shuffle(listed)
    return listed


def _cwe(request: _Request, rng: random.Random, tokens: TokenCount) -> _Draft:
    pool = _cwe_pool()
    # RULER's repeats: from 4K tokens on, 30 and 3 (example: 40 words, 10 and 3); below, 6 and 1
    # (example: 20 words, 3 and 1).
    long = request.length >= 4096
    common_repeats, other_repeats = (30, 3) if long else (6, 1)
    example_words = rng.sample(pool, 40 if long else 20)
    example_list = _cwe_list(example_words, *((10, 3) if long else (3, 1)), rng)
    example = (
        f"{_numbered(example_list)}\n{_CWE_QUESTION}\n"
        f"Answer: {_numbered(example_words[:_CWE_COMMON])}\n\n"
    )
    words = rng.sample(pool, len(pool))

    def more_words(layout: random.Random) -> Iterator[str]:
        yield from words
        taken = set(words)
        while True:
            yield _fresh(lambda: _random_value("words", layout), taken)

    def cost(word: str, taken: int) -> int:
        """Tokens of the entries "n. word" of the `taken`-th chosen word."""
        common = min(taken, _CWE_COMMON)
        entries = common * common_repeats + (taken - common) * other_repeats
        repeats = common_repeats if taken < _CWE_COMMON else other_repeats
        numbers = range(entries + 1, entries + repeats + 1)
        return repeats * tokens(" " + word) + sum(tokens(f" {n}.") for n in numbers)

    def compose(room: int, layout: random.Random) -> _Context:
        room -= tokens(example)
        chosen = [word for word, _ in _take(more_words(layout), room, cost)]
        if len(chosen) < _CWE_COMMON:
            raise _too_short(room, request.task)
        listed = _cwe_list(chosen, common_repeats, other_repeats, layout)
        return _Context(example + _numbered(listed))

    return _Draft(_CWE_QUESTION, tuple(words[:_CWE_COMMON]), compose)


_FWE_ALPHA = 2.0
_FWE_ZETA = math.pi**2 / 6  # zeta(_FWE_ALPHA), normalises the Zipf frequencies
_FWE_QUESTION = (
    "Read the coded text above and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words.\nQuestion: Do not provide any explanation. Please ignore "
    "the dots '....'. What are the three most frequently appeared words in the above coded text? "
    "Answer with the three words only."
)


def _fwe(request: _Request, rng: random.Random, tokens: TokenCount) -> _Draft:
    vocabulary_size = (request.length - MAX_NEW_TOKENS["fwe"]) // 50
    vocabulary: set[str] = set()
    while len(vocabulary) < vocabulary_size:
        vocabulary.add("".join(rng.choices(string.ascii_lowercase, k=6)))
    coded = sorted(vocabulary)
    rng.shuffle(coded)
    coded[0] = "..."  # the most frequent word is noise
    shares = [rank**-_FWE_ALPHA / _FWE_ZETA for rank in range(1, len(coded) + 1)]

    def compose(room: int, layout: random.Random) -> _Context:
        costs = [tokens(" " + word) for word in coded]

        def size(total: int) -> int:
            return sum(int(total * share) * cost for share, cost in zip(shares, costs))

        low, high = 0, 2 * (room + len(coded)) + 2  # size(high) > room: more words than room
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if size(middle) <= room else (low, middle)
        text = [word for word, share in zip(coded, shares) for _ in range(int(low * share))]
        layout.shuffle(text)
        return _Context(" ".join(text))

    return _Draft(_FWE_QUESTION, tuple(coded[1:4]), compose)


# --- question answering ----------------------------------------------------------------------

_QA_DATASETS = {"qa_1": "squad", "qa_2": "hotpotqa"}


@dataclass(frozen=True)
class _Question:
    text: str
    answers: tuple[str, ...]
    gold: tuple[int, ...]  # documents that hold the answer (HotpotQA: all its 10 paragraphs)
    related: tuple[int, ...] = ()  # other paragraphs of the same SQuAD article


@dataclass(frozen=True)
class _QaSet:
    documents: tuple[str, ...]
    questions: tuple[_Question, ...]


@functools.cache
def _qa_set(dataset: str) -> _QaSet:
    """RULER's reading: unique documents, sorted, and the answerable questions in file order."""
    if dataset == "squad":
        articles = data.squad()["data"]
        documents = tuple(sorted({p["context"] for a in articles for p in a["paragraphs"]}))
        number = {text: i for i, text in enumerate(documents)}
        questions = []
        for article in articles:
            in_article = [number[p["context"]] for p in article["paragraphs"]]
            for paragraph in article["paragraphs"]:
                gold = number[paragraph["context"]]
                questions += [
                    _Question(
                        qa["question"],
                        tuple(dict.fromkeys(a["text"] for a in qa["answers"])),
                        (gold,),
                        tuple(i for i in in_article if i != gold),
                    )
                    for qa in paragraph["qas"]
                    if not qa["is_impossible"]
                ]
        return _QaSet(documents, tuple(questions))
    entries = data.hotpotqa()

    def paragraphs(entry: dict) -> list[str]:
        return [f"{title}\n{''.join(sentences)}" for title, sentences in entry["context"]]

    documents = tuple(sorted({text for entry in entries for text in paragraphs(entry)}))
    number = {text: i for i, text in enumerate(documents)}
    questions = tuple(
        _Question(
            entry["question"],
            (entry["answer"],),
            tuple(dict.fromkeys(number[text] for text in paragraphs(entry))),
        )
        for entry in entries
    )
    return _QaSet(documents, questions)


def _qa(request: _Request, rng: random.Random, tokens: TokenCount) -> _Draft:
    qa_set = _qa_set(_QA_DATASETS[request.task])
    documents = qa_set.documents
    order = random.Random(f"{request.seed}/{request.task}").sample(
        range(len(qa_set.questions)), len(qa_set.questions)
    )
    question = qa_set.questions[order[request.index % len(order)]]

    def distractors(layout: random.Random) -> Iterator[int]:
        """Other paragraphs of the article first, then all others; again once all are used."""
        yield from layout.sample(question.related, len(question.related))
        near = set(question.gold) | set(question.related)
        others = [i for i in range(len(documents)) if i not in near]
        while True:
            yield from layout.sample(others, len(others))

    def header(number: int) -> int:
        return tokens(f"\n\nDocument {number}:\n")

    def cost(document: int, taken: int) -> int:
        return tokens(documents[document]) + header(len(question.gold) + taken + 1)

    def compose(room: int, layout: random.Random) -> _Context:
        gold_cost = sum(tokens(documents[i]) + header(n) for n, i in enumerate(question.gold, 1))
        if gold_cost > room:
            raise _too_short(room, request.task)
        taken = _take(distractors(layout), room - gold_cost, cost, _PATIENCE)
        chosen = [*question.gold, *(document for document, _ in taken)]
        layout.shuffle(chosen)
        return _Context(
            "\n\n".join(f"Document {n}:\n{documents[i]}" for n, i in enumerate(chosen, 1))
        )

    text = (
        "Answer the question based on the given documents. Only give me the answer and do not "
        f"output any other words.\n\nQuestion: {question.text}"
    )
    return _Draft(text, question.answers, compose)


_DRAFTERS: dict[str, Callable[[_Request, random.Random, TokenCount], _Draft]] = {
    **{task: _niah for task in _NIAH},
    "vt": _vt,
    "cwe": _cwe,
    "fwe": _fwe,
    "qa_1": _qa,
    "qa_2": _qa,
    "needle": _needle,
}
