#!/usr/bin/env bash
# Prepare an offline GPU machine for the quality runs from the parts `gpu_pack.sh` made: the files a
# normal machine downloads on first use (the models' GGUF files, the evaluation data) are carried
# in by hand and put where `parallelcomp_llm.default_model`, `parallelcomp_bench.quality.eval_models`
# and `parallelcomp_bench.quality.data` look; all of them still check every sha256 before use.
# One transfer is capped at 64 MiB, so the parts travel one per call, back to back while the
# machine stays warm: `keep-part` keeps the carried part in /tmp; the last call, carrying the last
# part, joins them, unpacks the bundle, installs its wheels and builds the models. Source it so the
# exports stay:
#   source benchmarks/parallelcomp_bench/quality/gpu_setup.sh keep-part   # carried: .carry_01
#   ...                                                                  # and so on
#   source benchmarks/parallelcomp_bench/quality/gpu_setup.sh             # carried: the last part
# Later calls on the same warm machine source it again (no carry): it only sets the exports.
set -e
export PARALLELCOMP_CACHE_DIR=/tmp/parallelcomp-cache PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:.:benchmarks
mkdir -p /tmp/carried
cp .carry_[0-9][0-9]/bundle.tar.* /tmp/carried/ 2>/dev/null || true
if [ "$1" != keep-part ] && [ ! -e /tmp/bundle/unpacked ]; then
    mkdir -p /tmp/bundle "$PARALLELCOMP_CACHE_DIR/eval-data"
    cat /tmp/carried/bundle.tar.* | tar -x -C /tmp/bundle
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site /tmp/bundle/wheels/*.whl
    mv /tmp/bundle/cache/*.gguf "$PARALLELCOMP_CACHE_DIR/"
    xz -d /tmp/bundle/eval-data/*.xz
    mv /tmp/bundle/eval-data/* "$PARALLELCOMP_CACHE_DIR/eval-data/"
    python3 -c "from parallelcomp_bench.quality.eval_models import EVAL_MODELS as m, QWEN_GGUF
from parallelcomp_llm.default_model import cache_dir
print(m['smollm2-135m']())
if (cache_dir() / QWEN_GGUF).exists(): print(m['qwen2.5-coder-0.5b']())"
    rm -rf /tmp/carried && touch /tmp/bundle/unpacked
fi
set +e
