#!/usr/bin/env bash
# Fetch, on this machine, the wheels that benchmarks/gpu.sh installs on the GPU machine.
#
# The GPU machine reaches no package registry. Its image has torch, transformers, torchvision,
# h5py, typer, rich, pillow, pyyaml, click, cloudpickle, fsspec, toolz, jinja2, msgpack, psutil,
# sortedcontainers, ... (/work/.library/device/KINDS.md) but not zarr, numcodecs, dask,
# distributed and the small packages only they need: those are fetched here as CPython 3.12
# manylinux x86-64 wheels into benchmarks/wheels/ (git-ignored, ~13 MB; the device carries at
# most 64 MiB). Versions are this checkout's .venv's (what the tests here run), else the pins
# below. The list is the dependency closure of those four minus what the image has: check a new
# version with  unzip -p benchmarks/wheels/NAME-*.whl '*/METADATA' | grep ^Requires-Dist
#
# Usage: benchmarks/gpu_wheels.sh        (then carry benchmarks/wheels with the device run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PINS="zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1 dask==2026.8.0
distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 tornado==6.6.1 zict==3.0.0"
# the installed version where there is one (the pin otherwise)
WANT=$("$PY" - $PINS <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for pin in sys.argv[1:]:
    name, _, fallback = pin.partition("==")
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(pin)
PYEOF
)
rm -rf benchmarks/wheels
mkdir -p benchmarks/wheels
# shellcheck disable=SC2086  # one argument per requirement
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d benchmarks/wheels $WANT
ls benchmarks/wheels
du -sh benchmarks/wheels
