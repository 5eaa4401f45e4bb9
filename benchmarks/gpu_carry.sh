#!/usr/bin/env bash
# What benchmarks/gpu_check.sh needs on a lent GPU machine that its image lacks (it has torch 2.11, transformers,
# tokenizers, safetensors, pyarrow; no network): wheels for lm-eval and its pure-Python needs, torchao built for
# torch 2.11, and the benchmark files. Run here (package registries reachable), in the repository root:
#   bash benchmarks/gpu_carry.sh              # fills .whl/ and .gpu/data/ (both git-ignored through .git/info/exclude)
# then, with the device tool, carry [".whl", ".gpu"] and run:
#   mkdir -p ../shared && ln -sfn "$PWD/.gpu/data" ../shared/data; python3 -m pip install -q --no-index --no-deps
#   --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHON=python3
#   GPU_CHECK_BUDGET_S=555 bash benchmarks/gpu_check.sh $OUT 2>&1 | tee $OUT/all.log
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SHARED=${SHARED:-../shared/data}
exclude=$(git rev-parse --git-path info/exclude)
for d in /.whl/ /.gpu/; do grep -qx "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform any)
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl lm_eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 more-itertools==11.2.1 multiprocess==0.70.19 \
  pytablewriter==1.2.1 DataProperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 \
  typepy==1.3.5 chardet==6.0.0.post1 zstandard==0.25.0 torchao==0.17.0
"$PY" -m pip wheel -q --no-deps -w .whl sqlitedict==2.1.0 word2number==1.1  # source-only: built here, pure Python
rm -rf .gpu && mkdir -p .gpu/data/mmlu/test
cp -r "$SHARED/hellaswag" "$SHARED/arc" "$SHARED/SHA256SUMS" .gpu/data/
for s in abstract_algebra high_school_us_history virology; do  # the MMLU subjects bench_eval's task files name
  cp "$SHARED/mmlu/test/${s}_test.csv" .gpu/data/mmlu/test/
done
du -sh .whl .gpu
