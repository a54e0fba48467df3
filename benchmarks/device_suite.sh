#!/usr/bin/env bash
# The GPU benchmark suite as one prepared command: set up what the GPU machine's image lacks,
# then the training throughput benchmark, the 5-fold ESC-50 runs of esc50-gpu-lh and esc50-gpu-x,
# their LH + X ensemble, and both runs scored again with test-time shifted copies. Results (JSON,
# the docs sections, the log) go to OUTDIR.
#
#   bash benchmarks/device_suite.sh OUTDIR            # on the GPU machine (meant for a 12-minute
#                                                     # GPU budget; not yet run on one)
#   bash benchmarks/device_suite.sh OUTDIR --smoke    # anywhere, CPU included: a handful of clips,
#                                                     # one epoch, a tiny model (under 2 minutes)
#
# On the GPU machine it uses what ../shared/device/pack.sh packed (see ../shared/device/README.md):
# .device/wheels/*.whl are installed into /tmp/site when soundtag's imports fail without them, and
# .device/data-K.tar parts still lying there are unpacked into .device/data (parts unpacked by
# earlier calls stay there). SOUNDTAG_DATA is .device/data when it holds esc50/, else as set.
# Run directories (checkpoints: too large to bring back) go to RUNS (default OUTDIR/runs; on the
# GPU machine give RUNS=/tmp/runs so that only the results come back). Copy OUTDIR/benchmarks.md's
# sections into docs/benchmarks.md by hand after a real run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/device_suite.sh OUTDIR [--smoke]}
smoke=""
[ "${2:-}" = "--smoke" ] && smoke="--smoke"
mkdir -p "$out"
out=$(cd "$out" && pwd)
runs=${RUNS:-$out/runs}
exec > >(tee -a "$out/suite.log") 2>&1  # a run cut off by its time limit still leaves its log
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && py=.venv/bin/python
started=$(date +%s)
stamp() { echo "[suite +$(( $(date +%s) - started ))s] $*"; }

# 1. What the image lacks: soundtag's imports, with the packed wheels when needed.
imports="import soundtag.training, soundtag.prediction.ensemble, pydantic, soundfile, soxr, librosa, iterstrat"
if ! PYTHONPATH="$PWD/src:${PYTHONPATH:-}" "$py" -c "$imports" 2>/dev/null; then
  if compgen -G ".device/wheels/*.whl" >/dev/null; then
    stamp "installing $(ls .device/wheels/*.whl | wc -l) packed wheels into /tmp/site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
  fi
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if ! "$py" -c "$imports"; then
  echo "soundtag cannot be imported here (the error above names the module); pack its wheel with" >&2
  echo "  WHEELS='<name> ...' bash ../shared/device/pack.sh   and upload .device/wheels again" >&2
  exit 3
fi

# 2. The data: unpack parts still lying in .device/.
if compgen -G ".device/data-*.tar" >/dev/null; then
  mkdir -p .device/data
  for t in .device/data-*.tar; do stamp "unpacking $t"; tar -xf "$t" -C .device/data && rm "$t"; done
fi
if [ -d .device/data/esc50 ]; then export SOUNDTAG_DATA="$PWD/.device/data"; fi
export SOUNDTAG_DATA="${SOUNDTAG_DATA:-$(cd .. && pwd)/shared/data}"
[ -f "$SOUNDTAG_DATA/esc50/meta/esc50.csv" ] || { echo "no ESC-50 under $SOUNDTAG_DATA (esc50/meta/esc50.csv)" >&2; exit 4; }
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

# 3. Throughput: loader path, device path, bare step.
stamp "throughput"
"$py" benchmarks/train.py throughput $smoke --out "$out/throughput.json" --doc "$out/benchmarks.md"

# 4. The two 5-fold runs, then their ensemble.
for recipe in esc50-gpu-lh esc50-gpu-x; do
  stamp "training $recipe, 5 folds"
  "$py" benchmarks/train.py esc50 --recipe "$recipe" $smoke --keep "$runs/$recipe" --json "$out/$recipe.json" \
    --doc "$out/benchmarks.md"
done
stamp "ensemble"
"$py" benchmarks/train.py ensemble "$runs/esc50-gpu-lh" "$runs/esc50-gpu-x" --out "$runs/ensemble" \
  --json "$out/ensemble.json" --doc "$out/benchmarks.md"
stamp "test-time shifted copies"
"$py" benchmarks/train.py tta "$runs/esc50-gpu-lh" "$runs/esc50-gpu-x" --tta 0 2 4 --case esc50 \
  --json "$out/tta.json" --doc "$out/benchmarks.md"
rm -rf "$runs/features"  # the feature cache: large, and rebuilt from the data in seconds
stamp "done: $out"
