#!/usr/bin/env bash
# Prepare an offline GPU machine for the quality runs: the files a normal machine downloads on
# first use (the default model's GGUF, RULER's data, the word lists) are carried in by hand and
# put where `parallelcomp_llm.default_model` and `parallelcomp_bench.quality.data` look; both still check
# every sha256 before use. The GGUF (98 MB) travels in two parts because one transfer to the
# machine we use is capped at 64 MiB, the tree (about 7 MB) included: `gpu_setup.sh
# keep-first-part` stores part A (the GGUF's first 55 MiB), a second call with part B, the data and
# the wheels that machine lacks (pydantic and its dependencies, platformdirs, gguf) assembles it.
# Source it so the exports stay:
#   source benchmarks/parallelcomp_bench/quality/gpu_setup.sh keep-first-part   # carried: .carry_a
#   source benchmarks/parallelcomp_bench/quality/gpu_setup.sh                   # carried: .carry_b, .whl
set -e
export PARALLELCOMP_CACHE_DIR=/tmp/parallelcomp-cache PYTHONUNBUFFERED=1
if [ "$1" = keep-first-part ]; then
    cp .carry_a/gguf.part_a /tmp/gguf.part_a
else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:.:benchmarks
    mkdir -p "$PARALLELCOMP_CACHE_DIR/eval-data"
    if [ ! -e "$PARALLELCOMP_CACHE_DIR/SmolLM2-135M-Instruct/config.json" ]; then
        cat /tmp/gguf.part_a .carry_b/gguf.part_b \
            > "$PARALLELCOMP_CACHE_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
    fi
    for packed in .carry_b/*.json.xz; do
        python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), \
open(sys.argv[2], 'wb'))" "$packed" "$PARALLELCOMP_CACHE_DIR/eval-data/$(basename "$packed" .xz)"
    done
    cp .carry_b/*.txt "$PARALLELCOMP_CACHE_DIR/eval-data/"
    python3 -c "from parallelcomp_llm.default_model import default_model_path as p; print(p())"
fi
set +e
