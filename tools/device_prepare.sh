#!/bin/bash
# Prepare, on this machine, what tools/device_run.sh needs on a lent GPU machine (issue 23 item 8), in the repo root:
#   .devdata/  the data the benchmark reads (../shared does not travel): coco128's 128 images (6.9 MB), the
#              yolo11n-reconstructed.pt weights (5.3 MB) and samples/bus.jpg (0.5 MB)
#   .whl/      wheels for the device's Python 3.12 of what it lacks: ultralytics and ultralytics-thop (installed
#              there with --no-deps: its other needs are in the device image), faiss-cpu (the faiss search rows)
# Both folders are in .gitignore; the device tool carries them: carry [".whl", ".devdata"] (about 45 MiB of the
# 64 MiB a call may carry, with the working tree). Usage: bash tools/device_prepare.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
DATA=../shared/data
rm -rf .devdata
mkdir -p .devdata/coco128/images .devdata/weights .devdata/samples
cp -r "$DATA/coco128/images/train2017" .devdata/coco128/images/
cp "$DATA/weights/yolo11n-reconstructed.pt" .devdata/weights/
cp "$DATA/samples/bus.jpg" .devdata/samples/
# the versions this project is tested with (pip show ultralytics ultralytics-thop faiss-cpu)
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    ultralytics==8.4.190 ultralytics-thop==2.2.3 faiss-cpu==1.15.1
du -sh .devdata .whl
du -sch .devdata .whl $(git ls-files) | tail -1
