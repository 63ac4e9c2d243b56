"""The speed benchmarks on the CPU (`--tiny`): they run through the engine's public seams, and
their result files say what was measured (stage timings, engine settings, revision)."""

from __future__ import annotations

import json
import subprocess
import sys

from parallelcomp_llm.tracing import STAGES

MERGING = {"kv_selection", "merge"}
TIMED = set(STAGES) | {"other", "request_start_to_first_token"}


def run_module(module: str, out, *options: str) -> dict:
    """Run `module --tiny` writing into `out`; the record it wrote."""
    command = [sys.executable, "-W", "error::FutureWarning", "-m", module, "--tiny"]
    command += ["--out", str(out), *options]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    [written] = out.glob("*.json")
    return json.loads(written.read_text())


def test_speed_run_times_every_stage_from_the_observer(tmp_path):
    methods = "--methods", "parallelcomp,parallelcomp-merge,sdpa"
    record = run_module("parallelcomp_bench.speed.run", tmp_path, "--profile", *methods)
    assert record["environment"]["git"]["commit"]
    assert record["engines"]["parallelcomp"]["config"]["kept_chunks"] == "reread"  # default
    assert record["engines"]["parallelcomp-merge"]["config"]["kept_chunks"] == "merge"
    assert record["engines"]["parallelcomp"]["stages"]["selector"]["name"] == "snapkv"
    entries = {(e["method"], e["length"]): e for e in record["results"]}
    read = {"chunk_prefill", "question_pass", "chunk_scoring", "final_pass"}
    for method, ran in (("parallelcomp", read), ("parallelcomp-merge", read | MERGING)):
        stages = entries[(method, 1024)]["median"]["stages_gpu_s"]
        assert ran <= {key.removesuffix("_s") for key in stages} <= TIMED
        assert all(stages[f"{stage}_s"] > 0 for stage in ran)
        assert stages["request_start_to_first_token_s"] >= sum(stages[f"{s}_s"] for s in ran)
    reread = entries[("parallelcomp", 1024)]["median"]["stages_gpu_s"]
    assert not MERGING & {key.removesuffix("_s") for key in reread}  # nothing merged
    engine = entries[("parallelcomp", 1024)]["median"]
    # the profiled request after the timed ones leaves their records as they were
    assert sum(engine["rows_per_prefill_pass"]) == engine["engine_stats"]["chunks_total"]
    assert "parallelcomp/chunk_prefill" in (tmp_path / record["profile"]["table_file"]).read_text()
    assert engine["new_tokens"] == record["new_tokens"]  # EOS ignored: every token made
    full = entries[("sdpa", 1024)]["median"]
    assert full["new_tokens"] == record["new_tokens"] and full["ttft_s"] > 0


def test_reuse_answers_later_questions_from_the_cache(tmp_path):
    record = run_module("parallelcomp_bench.speed.reuse", tmp_path)
    assert record["later_questions"]["cache_hit"] is True
    assert record["later_questions"]["chunks_prefilled"] == 0
    assert record["engine"]["config"]["context_cache_host_fraction"] == 0.0
