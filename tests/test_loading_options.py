"""Hugging Face loading options through `from_pretrained` (`LoadOptions`), and models placed by a
device map.

On the CPU: the options reach transformers (a revision and a token through an offline Hub cache,
trust_remote_code through a folder with its own model class), bad ones are refused before
anything loads, the token shows nowhere, and a device map over the CPU answers as the plain
engine does. With CUDA: the tiny model sharded over the GPU and the CPU, each layer's KV on its
own layer's device, answers token for token as the same model on one device, merging and
re-reading, calibrated, from a `ContextCache` kept, saved and loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from parallelcomp_llm import (
    InvalidConfigError,
    LoadOptions,
    ParallelCompConfig,
    ParallelCompEngine,
)
from parallelcomp_llm.cli import main
from parallelcomp_llm.device import layer_devices, model_device
from parallelcomp_llm.kvcache import cache_argument
from parallelcomp_llm.stages import ChunkEntries, KVSelector
from parallelcomp_llm.testing import (
    TINY_SETTINGS,
    text_of_tokens,
    tiny_model,
    tiny_model_folder,
    tiny_tokenizer,
)

CONTEXT = [text_of_tokens(1100, seed=1), text_of_tokens(800, seed=2)]
QUESTIONS = ["What comes next?", "Which letter comes most often?"]
SECRET = "hf_doNotShowThisTokenAnywhere123"
FLOAT32 = TINY_SETTINGS | {"dtype": "float32"}
REREAD = {"kept_chunks": "reread", "keep_chunks": 1}
"""The most relevant chunk read again as one prompt."""
MERGE = {"kept_chunks": "merge", "keep_chunks": 2, "kv_budget": 192}
"""Merged KV of two kept chunks, each evicted to 96 entries per layer and head."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")


def answers(engine: ParallelCompEngine, tmp_path: Path) -> list[list[int]]:
    """Greedy token ids of: a question over the context, two questions in one batch (the context
    then kept by the engine), and a question over the context's encoding, kept and then saved
    and loaded again."""
    first = engine.generate(CONTEXT, QUESTIONS[0], max_new_tokens=12, ignore_eos=True)
    assert first.stats.chunks_total >= 4 and len(first.token_ids) == 12
    assert first.stats.reread == (engine.config.kept_chunks == "reread")
    ids = [first.token_ids]
    batch = engine.generate_batch(CONTEXT, QUESTIONS, max_new_tokens=12, ignore_eos=True)
    ids += [answer.token_ids for answer in batch]
    cache = engine.encode(CONTEXT)
    ids.append(engine.generate(cache, QUESTIONS[1], max_new_tokens=12, ignore_eos=True).token_ids)
    cache.save(tmp_path / "context.safetensors")
    loaded = engine.load_context_cache(tmp_path / "context.safetensors")
    assert loaded.devices == layer_devices(engine.model)
    ids.append(engine.generate(loaded, QUESTIONS[0], max_new_tokens=12, ignore_eos=True).token_ids)
    return ids


# -- options reach transformers ----------------------------------------------------------------

_HUB_SCRIPT = """
import json, sys
from parallelcomp_llm import ModelDownloadError, ParallelCompEngine
from parallelcomp_llm.testing import TINY_SETTINGS

secret, snapshot_v2, remote_code = sys.argv[1:]
settings = TINY_SETTINGS | {"dtype": "float32"}
main = ParallelCompEngine.from_pretrained("tiny/model", token=secret, **settings)
v2 = ParallelCompEngine.from_pretrained("tiny/model", revision="v2", **settings)
by_path = ParallelCompEngine.from_pretrained(snapshot_v2, **settings)
try:
    ParallelCompEngine.from_pretrained("tiny/model", revision="no-such-branch", **settings)
    missing = None
except ModelDownloadError as error:
    missing = str(error)
trusted = ParallelCompEngine.from_pretrained(remote_code, trust_remote_code=True, **settings)
untrusted = ParallelCompEngine.from_pretrained(remote_code, trust_remote_code=False, **settings)
question = ["abc " * 300], "What comes next?"
print(json.dumps({
    "v2_is_snapshot_v2": bool((v2.model.lm_head.weight == by_path.model.lm_head.weight).all()),
    "main_is_snapshot_v2": bool((main.model.lm_head.weight == by_path.model.lm_head.weight).all()),
    "v2_answer": v2.generate(*question, max_new_tokens=8).token_ids,
    "by_path_answer": by_path.generate(*question, max_new_tokens=8).token_ids,
    "missing_revision": missing,
    "described": main.describe(),
    "trusted_class": type(trusted.model).__name__,
    "untrusted_class": type(untrusted.model).__name__,
}))
"""

_REMOTE_MODEL = """
from transformers import LlamaForCausalLM


class TaggedLlamaForCausalLM(LlamaForCausalLM):
    \"\"\"A Llama whose class says that the folder's own code was run.\"\"\"
"""


def _hub_cache(root: Path, revisions: dict[str, Path]) -> None:
    """An offline Hugging Face Hub cache under `root` holding model 'tiny/model' at the
    `revisions` (name to model folder), each as a snapshot of its own commit."""
    repo = root / "models--tiny--model"
    for number, (name, source) in enumerate(revisions.items()):
        commit = f"{number + 1:040x}"
        shutil.copytree(source, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / name).write_text(commit)


def test_revision_token_and_trust_remote_code_reach_transformers(tmp_path):
    main = tiny_model_folder(tmp_path / "main", seed=0)
    v2 = tiny_model_folder(tmp_path / "v2", seed=1)
    _hub_cache(tmp_path / "hub", {"main": main, "v2": v2})
    remote = tiny_model_folder(tmp_path / "remote", seed=2)
    (remote / "modeling_tagged.py").write_text(_REMOTE_MODEL)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_tagged.TaggedLlamaForCausalLM"}
    (remote / "config.json").write_text(json.dumps(config))
    environment = os.environ | {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    snapshot_v2 = tmp_path / "hub/models--tiny--model/snapshots" / f"{2:040x}"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_HUB_SCRIPT), SECRET, str(snapshot_v2), str(remote)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stdout + result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["v2_is_snapshot_v2"] and not found["main_is_snapshot_v2"]
    assert found["v2_answer"] == found["by_path_answer"]
    assert "cannot load model 'tiny/model' from the Hugging Face Hub" in found["missing_revision"]
    assert found["described"]["load_options"] == {"token": "<hidden>"}
    assert (found["trusted_class"], found["untrusted_class"]) == (
        "TaggedLlamaForCausalLM",
        "LlamaForCausalLM",
    )


def test_config_fields_and_loading_options_together(folder):
    engine = ParallelCompEngine.from_pretrained(
        folder, keep_chunks=2, revision="main", trust_remote_code=False, **FLOAT32
    )
    assert engine.config.keep_chunks == 2 and engine.config.dtype == "float32"
    assert engine.describe()["load_options"] == {"revision": "main", "trust_remote_code": False}
    explicit = ParallelCompEngine.from_pretrained(
        folder, load_options={"device_map": "cpu"}, revision="main", **FLOAT32
    )
    assert explicit.describe()["load_options"] == {"device_map": "cpu", "revision": "main"}
    assert explicit.describe()["devices"] == ["cpu"]
    options = LoadOptions(device_map="cpu", revision="main")
    merged = ParallelCompEngine.from_pretrained(
        folder, load_options=options, revision="other", **FLOAT32
    )
    assert merged.describe()["load_options"]["revision"] == "other"


# -- refused before anything loads ---------------------------------------------------------------


def test_unknown_keyword_is_named_with_what_is_accepted(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(InvalidConfigError) as raised:
        ParallelCompEngine.from_pretrained(missing, device_mapp="auto", chunk_tokens=64)
    message = str(raised.value)
    assert "unknown keyword 'device_mapp' (did you mean 'device_map'?)" in message
    assert "ParallelCompConfig fields (chunk_tokens," in message
    assert "loading options (device_map, max_memory, quantization_config" in message
    assert "\n" not in message
    with pytest.raises(InvalidConfigError, match="unknown keywords 'colour', 'flavour'"):
        ParallelCompEngine.from_pretrained(missing, colour=1, flavour=2)
    with pytest.raises(InvalidConfigError, match="unknown keyword 'colour'"):
        ParallelCompEngine.default(colour=1)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"device_map": 3.5}, "device_map must be a strategy"),
        ({"device_map": True}, "device_map must be a strategy"),
        ({"device_map": "gpu"}, "'gpu' is not a device"),
        ({"device_map": {"model.layers.0": "gpu"}}, "'gpu' is not a device"),
        ({"device_map": {}}, "names at least one module"),
        ({"device_map": {"model.layers.0": 1.5}}, "device_map"),
        ({"max_memory": ["10GiB"]}, "max_memory"),
        ({"quantization_config": {"quant_method": "no-such-method"}}, "Unknown quantization"),
        ({"quantization_config": "4bit"}, "quantization_config"),
        ({"trust_remote_code": "yes"}, "trust_remote_code"),
        ({"revision": ""}, "revision"),
        ({"revision": 3}, "revision"),
        ({"token": 12345}, "token: must be a non-empty string or a bool"),
    ],
)
def test_bad_loading_options_are_refused_before_loading(tmp_path, options, complaint):
    with pytest.raises(InvalidConfigError, match="invalid LoadOptions") as raised:
        ParallelCompEngine.from_pretrained(tmp_path / "no-model-here", **options)
    assert complaint in str(raised.value)
    with pytest.raises(InvalidConfigError, match="invalid LoadOptions"):
        ParallelCompEngine.from_pretrained(tmp_path / "no-model-here", load_options=options)


def test_load_options_of_another_type_are_refused(tmp_path):
    with pytest.raises(InvalidConfigError, match="load_options must be a LoadOptions or a dict"):
        ParallelCompEngine.from_pretrained(tmp_path, load_options=["device_map"])


def test_a_device_that_contradicts_the_device_map_is_refused(tmp_path):
    for device, device_map in [("cuda", "cpu"), ("cpu", "auto"), ("cpu", {"": "cuda:0"})]:
        with pytest.raises(InvalidConfigError, match="conflicts with device_map") as raised:
            ParallelCompEngine.from_pretrained(tmp_path, device=device, device_map=device_map)
        assert "leave device as 'auto'" in str(raised.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_a_device_map_onto_cuda_without_cuda_is_refused(tmp_path):
    with pytest.raises(InvalidConfigError, match="names 'cuda:0', but CUDA is not available"):
        ParallelCompEngine.from_pretrained(tmp_path, device_map={"model": 0, "lm_head": "cpu"})


def test_the_default_model_refuses_hub_options_before_fetching_it():
    with pytest.raises(InvalidConfigError, match="not loaded from the Hub") as raised:
        ParallelCompEngine.default(revision="v2", token=SECRET)
    assert "revision and token" in str(raised.value) and SECRET not in str(raised.value)
    with pytest.raises(InvalidConfigError, match="revision"):
        ParallelCompEngine.default(load_options=LoadOptions(revision="v2"))
    with pytest.raises(InvalidConfigError, match="device_map must be a strategy"):
        ParallelCompEngine.default(device_map=2.0)


def test_the_token_shows_in_no_repr_error_or_description(folder):
    options = LoadOptions(token=SECRET, revision="main")
    assert SECRET not in repr(options) + str(options) + str(options.describe())
    assert options.hub_keywords()["token"] == SECRET
    with pytest.raises(InvalidConfigError) as raised:
        LoadOptions(token=SECRET, device_map=3.5)
    assert SECRET not in str(raised.value)
    with pytest.raises(InvalidConfigError) as raised:
        LoadOptions(token=[SECRET])
    assert SECRET not in str(raised.value)
    with pytest.raises(InvalidConfigError) as raised:
        ParallelCompEngine.from_pretrained(folder, token=SECRET, device="cpu", device_map="auto")
    assert SECRET not in str(raised.value)
    engine = ParallelCompEngine.from_pretrained(folder, token=SECRET, **FLOAT32)
    assert engine.describe()["load_options"] == {"token": "<hidden>"}
    assert SECRET not in json.dumps(engine.describe())


def test_the_command_line_passes_loading_options(tmp_path, capsys):
    folder = tiny_model_folder(tmp_path / "model", window=2048)
    document = tmp_path / "document.txt"
    document.write_text(CONTEXT[0], encoding="utf-8")
    common = ["ask", "--model", str(folder), "--context", str(document), "--dtype", "float32"]
    common += ["--max-new-tokens", "6", "--stats"]
    given = ["--device-map", "cpu", "--revision", "main", "--trust-remote-code"]
    assert main([*common, *given, QUESTIONS[0]]) == 0
    out, err = capsys.readouterr()
    stats = json.loads(err[err.index("{") :])
    assert stats["engine"]["load_options"] == {
        "device_map": "cpu",
        "revision": "main",
        "trust_remote_code": True,
    }
    assert main([*common, "--device-map", "cpu", "--device", "cuda", QUESTIONS[0]]) == 2
    assert "conflicts with device_map='cpu'" in capsys.readouterr().err


# -- a device map over the CPU -------------------------------------------------------------------


def _cpu_map(layers: int) -> dict[str, str]:
    modules = ["model.embed_tokens", *(f"model.layers.{n}" for n in range(layers))]
    return dict.fromkeys([*modules, "model.norm", "model.rotary_emb", "lm_head"], "cpu")


@pytest.mark.parametrize("mode", [REREAD, MERGE, MERGE | {"calibration_layers": (0, 1)}])
def test_a_device_map_over_the_cpu_answers_as_the_plain_engine(folder, tmp_path, mode):
    plain = ParallelCompEngine.from_pretrained(folder, device="cpu", **FLOAT32, **mode)
    expected = answers(plain, tmp_path)
    maps = [("cpu", "cpu"), (_cpu_map(2), "auto"), ({"": "cpu"}, "cpu")]
    if not torch.cuda.is_available():
        maps.append(("auto", "auto"))  # accelerate's own placement: here, all on the CPU
    for device_map, device in maps:
        mapped = ParallelCompEngine.from_pretrained(
            folder, device_map=device_map, device=device, **FLOAT32, **mode
        )
        assert answers(mapped, tmp_path) == expected
        assert mapped.describe()["load_options"] == {"device_map": device_map}
        assert layer_devices(mapped.model) == [torch.device("cpu")] * 2


# -- sharded over the GPU and the CPU ------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
LAYERS = 4
GPU = torch.device("cuda:0")
CPU = torch.device("cpu")
WHOLE_CHUNKS = MERGE | {"kv_budget": None}


class LastEntries(KVSelector):
    """Keeps the last entries of each chunk: KV eviction whose choice hangs on no attention
    score, so that the GPU and the CPU keep the same entries. (SnapKV's max-pooled scores tie
    exactly, and top-k breaks ties differently on the two.)"""

    def select(self, entries: ChunkEntries, budget: int) -> torch.Tensor:
        count = min(budget, entries.tokens)
        kept = torch.arange(entries.tokens - count, entries.tokens, device=entries.keys.device)
        return kept.expand(entries.keys.shape[0], -1)


SPLIT_MODES = {
    "reread": (REREAD, None),
    "merged whole": (WHOLE_CHUNKS, None),
    "merged, evicted, scored by attention": (MERGE | {"chunk_scoring": "attention"}, LastEntries),
    "merged whole, static decoding steps": (WHOLE_CHUNKS | {"decode_step": "static"}, None),
    "merged, evicted, calibrated across the devices": (
        MERGE | {"calibration_layers": (1, 2)},
        LastEntries,
    ),
}
"""Settings, and the KV selector (None: SnapKV), of each way of reading the kept chunks."""
SHARDINGS = {
    "inputs on the GPU": {
        "model.embed_tokens": "cuda:0",
        "model.rotary_emb": "cuda:0",
        "model.layers.0": "cuda:0",
        "model.layers.1": "cuda:0",
        "model.layers.2": "cpu",
        "model.layers.3": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
    },
    "inputs on the CPU, head on the GPU": {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cuda:0",
        "model.layers.1": "cuda:0",
        "model.layers.2": "cpu",
        "model.layers.3": "cpu",
        "model.norm": "cuda:0",
        "lm_head": "cuda:0",
    },
}


def _engine(model: torch.nn.Module, mode: str) -> ParallelCompEngine:
    settings, selector = SPLIT_MODES[mode]
    config = ParallelCompConfig(**TINY_SETTINGS, **settings)
    return ParallelCompEngine(
        model, tiny_tokenizer(), config, selector=selector() if selector else None
    )


def _sharded(device_map: dict[str, str]) -> torch.nn.Module:
    """The tiny model with its modules on the devices of `device_map`, each running where it
    is (accelerate's dispatch with the CPU as main device, so that no CPU module is offloaded
    to the GPU), as `from_pretrained(device_map=...)` over several GPUs places a model."""
    from accelerate import dispatch_model

    model = tiny_model("llama", layers=LAYERS)
    return dispatch_model(
        model, device_map=device_map, main_device="cpu", skip_keys=[cache_argument(model)]
    )


@needs_cuda
@pytest.mark.parametrize("sharding", SHARDINGS)
@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_a_model_sharded_over_gpu_and_cpu_answers_as_on_one_device(tmp_path, sharding, mode):
    sharded = _engine(_sharded(SHARDINGS[sharding]), mode)
    expected_layers = [GPU, GPU, CPU, CPU]
    assert layer_devices(sharded.model) == expected_layers
    assert model_device(sharded.model) == torch.device(SHARDINGS[sharding]["model.embed_tokens"])
    cache = sharded.encode(CONTEXT)
    assert [keys.device for keys in cache.batches[0].keys] == expected_layers
    assert sharded.describe()["devices"] in (["cuda:0", "cpu"], ["cpu", "cuda:0"])
    one_device = _engine(tiny_model("llama", layers=LAYERS).to(GPU), mode)
    assert answers(sharded, tmp_path) == answers(one_device, tmp_path)
    stored = sharded.generate(CONTEXT, QUESTIONS[1], max_new_tokens=4)
    assert stored.stats.context_cache_hit
    budget = SPLIT_MODES[mode][0].get("kv_budget")
    if budget is not None:
        assert stored.stats.kv_entries_kept == len(sharded.prompts.prefix_ids) + budget


@needs_cuda
@pytest.mark.parametrize("sharding", SHARDINGS)
def test_snapkv_eviction_runs_on_a_model_sharded_over_gpu_and_cpu(sharding):
    # Which entries SnapKV keeps may differ from one device's choice (ties, see `LastEntries`), so
    # this checks that its eviction runs across the devices, each layer's on its own.
    config = ParallelCompConfig(**TINY_SETTINGS, **MERGE)
    sharded = ParallelCompEngine(_sharded(SHARDINGS[sharding]), tiny_tokenizer(), config)
    for answer in sharded.generate_batch(CONTEXT, QUESTIONS, max_new_tokens=8, ignore_eos=True):
        assert len(answer.token_ids) == 8
        assert answer.stats.kv_entries_kept == len(sharded.prompts.prefix_ids) + 192


@needs_cuda
def test_from_pretrained_with_a_device_map_over_gpu_and_cpu(tmp_path):
    folder = tiny_model_folder(tmp_path / "model", layers=LAYERS)
    device_map = SHARDINGS["inputs on the GPU"]
    mapped = ParallelCompEngine.from_pretrained(folder, device_map=device_map, **FLOAT32, **MERGE)
    one_device = ParallelCompEngine.from_pretrained(folder, device="cuda:0", **FLOAT32, **MERGE)
    # accelerate runs the CPU part of a map whose main device is a GPU on that GPU, bringing its
    # weights in for each pass (CPU offload): every layer's KV is on the GPU.
    assert layer_devices(mapped.model) == [GPU] * LAYERS
    assert mapped.config.device == "cuda:0"
    assert answers(mapped, tmp_path) == answers(one_device, tmp_path)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_from_pretrained_with_a_device_map_over_two_gpus(tmp_path):
    folder = tiny_model_folder(tmp_path / "model", layers=LAYERS)
    device_map = {
        name: "cuda:1" if device == "cpu" else device
        for name, device in SHARDINGS["inputs on the GPU"].items()
    }
    mapped = ParallelCompEngine.from_pretrained(folder, device_map=device_map, **FLOAT32, **MERGE)
    one_device = ParallelCompEngine.from_pretrained(folder, device="cuda:0", **FLOAT32, **MERGE)
    assert layer_devices(mapped.model) == [GPU, GPU, torch.device("cuda:1"), torch.device("cuda:1")]
    assert answers(mapped, tmp_path) == answers(one_device, tmp_path)
