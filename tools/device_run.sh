#!/bin/bash
# The command a session with a lent GPU machine passes to the device tool (issue 23 item 8), after
# `bash tools/device_prepare.sh` here:
#   run(command="bash tools/device_run.sh", carry=[".whl", ".devdata"], timeout_s=420)
# It installs the carried wheels into /tmp/site, runs tools/bench_device.py (<= 5 minutes on an H200: a budget of
# 280 s for its stages) and writes the table and the whole log to $OUT (bench_device.md, bench_device.log, gpu.txt).
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the wheels failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 OBJSEARCH_CACHE_DIR=/tmp/objsearch-cache
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
timeout 360 python3 tools/bench_device.py --data .devdata --device 0 --budget-s 280 --out "$OUT/bench_device.md" \
    2>&1 | tee "$OUT/bench_device.log"
