#!/bin/bash
# The whole `fastsft preprocess` command in two checkouts of fastsft, alternating, each a fresh
# process with a warm cache (one untimed run each first): how a change moves what the user runs.
#
#   benchmarks/compare_checkouts.sh BASE_CHECKOUT NEW_CHECKOUT DATA_DIR DATASET TOKENIZER TEMPLATE [ROUNDS]
#
# Each checkout needs its extension built (`python setup.py build_ext --inplace`). Prints one
# "checkout seconds" line per run and the median of each.
set -euo pipefail
base=$(realpath "$1") new=$(realpath "$2") data=$3 dataset=$4 tokenizer=$(realpath "$5") template=$6
rounds=${7:-5}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export FASTSFT_CACHE_DIR=$scratch/cache
run() {
    rm -rf "$scratch/out"
    local start end
    start=$(date +%s.%N)
    (cd "$1" && PYTHONPATH=$1 python -m fastsft preprocess --dataset "$dataset" --dataset-dir "$data" \
        --template "$template" --tokenizer "$tokenizer" --cutoff-len 2048 --output "$scratch/out" --quiet >/dev/null)
    end=$(date +%s.%N)
    echo "$2 $(python -c "print(f'{$end - $start:.3f}')")"
}
run "$base" base >/dev/null
run "$new" new >/dev/null
for _ in $(seq "$rounds"); do run "$base" base; run "$new" new; done | tee "$scratch/times"
python - "$scratch/times" <<'PY'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    name, seconds = line.split()
    times.setdefault(name, []).append(float(seconds))
print("  ".join(f"{name} median {statistics.median(v):.2f} s" for name, v in times.items()))
PY
