#!/usr/bin/env bash
# The GPU benchmark end to end: install what the machine lacks, then run benchmarks/gpu.py.
#
# On the GPU machine (python3 there has torch, transformers, torchvision; no registry): first,
# here, benchmarks/gpu_wheels.sh, then one device run with carry ["benchmarks/wheels"] and
# timeout_s 480:
#   bash benchmarks/gpu.sh --size full --json $OUT/gpu.json 2>&1 | tee $OUT/gpu.txt
# (estimated 4-5 minutes; gpu.py skips the rows left after --budget seconds, default 360).
# Here, on a CPU:  bash benchmarks/gpu.sh --size tiny
#
# Installs, only when the import fails: zarr/numcodecs/dask/distributed from benchmarks/wheels/
# (pip --no-index --find-links, so pip checks their dependencies against what is installed),
# then pkd itself from this tree (no dependencies, no build isolation: setuptools is there).
# Into python3's own environment (a fresh machine, commands run as root); where that fails, the
# wheels go to $PKD_BENCH_SITE/deps (default /tmp/pkd-bench-site) and pkd is linked into
# $PKD_BENCH_SITE/shim, both on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
SITE=${PKD_BENCH_SITE:-/tmp/pkd-bench-site}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PKD_QUIET=1
PIP=("$PY" -m pip install -q --no-index --no-cache-dir --disable-pip-version-check)

has() { "$PY" -P -c "import $1" 2>/dev/null; }  # -P: not the checkout's pkd/ (no pipeline/ in it)

if ! has "zarr, numcodecs, dask, distributed"; then
    if ! ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
        echo "gpu.sh: zarr / dask are missing and benchmarks/wheels/ is empty: run" \
             "benchmarks/gpu_wheels.sh here and carry benchmarks/wheels" >&2
        exit 2
    fi
    if ! "${PIP[@]}" --find-links benchmarks/wheels zarr numcodecs dask distributed; then
        echo "gpu.sh: installing into $SITE/deps instead (no dependency check)" >&2
        "${PIP[@]}" --no-deps --upgrade --target "$SITE/deps" benchmarks/wheels/*.whl
        export PYTHONPATH="$SITE/deps${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
if ! has "pkd.pipeline.extract, pkd.train.loop"; then
    if ! "${PIP[@]}" --no-deps --no-build-isolation .; then
        # pyproject's package-dir mapping (pkd.pipeline = pipeline/, ...) as links, no build
        echo "gpu.sh: pip could not install pkd; linking the tree into $SITE/shim" >&2
        rm -rf "$SITE/shim" && mkdir -p "$SITE/shim/pkd"
        for f in pkd/*; do ln -s "$PWD/$f" "$SITE/shim/pkd/"; done
        for d in pipeline stores train; do ln -s "$PWD/$d" "$SITE/shim/pkd/$d"; done
        export PYTHONPATH="$SITE/shim${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
"$PY" -P -c "import torch, transformers, zarr, dask, pkd.pipeline.extract as e
print('gpu.sh: python', __import__('sys').version.split()[0], 'torch', torch.__version__,
      'transformers', transformers.__version__, 'zarr', zarr.__version__, 'dask',
      dask.__version__, 'pkd from', e.__file__.rsplit('/pipeline/', 1)[0])"
exec "$PY" benchmarks/gpu.py "$@"
