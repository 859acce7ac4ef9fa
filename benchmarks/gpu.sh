#!/usr/bin/env bash
# The GPU benchmark (issue 14, section 5) in one call of at most 8 minutes, on a machine with torch and CUDA but no
# nerfstudio and no package registry:
#   deps         unpack gpu-carry/site.tar.xz (benchmarks/gpu_carry.sh makes it) onto PYTHONPATH; check imports
#   equivalence  tests/test_cuda_equivalence.py as a plain script: the core on CPU and CUDA, same outputs
#   synth        a 612x512 20-view bunny (pmni-synth's renderer) from gpu-carry/stanford-bunny.obj.gz
#   throughput   rays/s and samples per ray of each SDF gradient method (analytic, autodiff, finite_difference)
#   calibrated   the pmni preset through train_core's step on CUDA, 4 views held out; Chamfer at checkpoints of
#                training time until it is <= 0.2 % of the bbox diagonal (time-to-Chamfer)
#   pose_free    the same from a ring start (--pose-init ring, normal_camera_space_GT), all 20 views
# Every phase has its own time cap (below); the caps add up to less than 8 minutes, and a phase that runs out is
# recorded as timed_out while the others go on. Everything goes to $PMNI_GPU_OUT (default $OUT, else gpu-output/):
# gpu.log, <phase>.log, <phase>.json and summary.json (all the numbers).
#
#   bash benchmarks/gpu.sh              # the real run (CUDA required)
#   bash benchmarks/gpu.sh --dry-run    # CPU, tiny dataset, a few steps: checks the plumbing (or PMNI_GPU_DRY_RUN=1)
#
# Environment: PMNI_PYTHON (python with torch; default: the first python3/python that imports torch),
# PMNI_GPU_CARRY (default gpu-carry/), PMNI_GPU_ITERATIONS (run length: auto = what the measured analytic it/s
# trains in the training budget, clipped to 1000..30000; 0 = the preset's 30000; or a number).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DRY=${PMNI_GPU_DRY_RUN:-0}
PRINT_BUDGET=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        --print-budget) PRINT_BUDGET=1 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown argument $arg (use --dry-run, --print-budget or nothing)" >&2; exit 2 ;;
    esac
done
CARRY=${PMNI_GPU_CARRY:-$ROOT/gpu-carry}
ITERATIONS=${PMNI_GPU_ITERATIONS:-auto}

# ------------------------------------------------------------------------------------------- time budget (s)
if [ "$DRY" = 1 ]; then
    DEVICE=cpu PRESET=pmni TOTAL_CAP=240
    CAP_DEPS=45 CAP_EQUIV=45 CAP_SYNTH=30 CAP_THROUGHPUT=45 CAP_CALIBRATED=45 CAP_POSE_FREE=45 CAP_SUMMARY=20
    VIEWS=8 WIDTH=96 HEIGHT=80 HELDOUT="2 5" RAYS=128 WARMUP=1 STEPS=1 UNTIMED=0
    TRAIN_BUDGET=4 WALL_CAP=15 EVAL_AT="1 4" MESH_RES=32 ITERATIONS=20
else
    DEVICE=cuda PRESET=pmni TOTAL_CAP=470
    CAP_DEPS=25 CAP_EQUIV=40 CAP_SYNTH=40 CAP_THROUGHPUT=45 CAP_CALIBRATED=150 CAP_POSE_FREE=150 CAP_SUMMARY=15
    VIEWS=20 WIDTH=612 HEIGHT=512 HELDOUT="2 7 12 17" RAYS=0 WARMUP=100 STEPS=20 UNTIMED=2
    TRAIN_BUDGET=100 WALL_CAP=138 EVAL_AT="10 20 30 45 60 80 100" MESH_RES=256
fi

if [ "$PRINT_BUDGET" = 1 ]; then  # the caps in seconds, for tests/test_gpu_script.py
    for v in TOTAL_CAP CAP_DEPS CAP_EQUIV CAP_SYNTH CAP_THROUGHPUT CAP_CALIBRATED CAP_POSE_FREE CAP_SUMMARY TRAIN_BUDGET WALL_CAP; do
        echo "$v=${!v}"
    done
    exit 0
fi
OUTDIR=${PMNI_GPU_OUT:-${OUT:-$ROOT/gpu-output}}
mkdir -p "$OUTDIR" || exit 1
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pmni-gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
: > "$OUTDIR/phases.tsv"
LOG=$OUTDIR/gpu.log
: > "$LOG"
START=$(date +%s.%N)

say() { echo "$*" | tee -a "$LOG"; }
elapsed() { awk -v s="$START" -v n="$(date +%s.%N)" 'BEGIN {printf "%.1f", n - s}'; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >> "$OUTDIR/phases.tsv"; }
skip() { say "=== $1: skipped ($2)"; record "$1" skipped 0 0 "$2"; }

# phase NAME CAP CMD...: run under `timeout CAP` (shrunk to what the total cap leaves), log to NAME.log
phase() {
    local name=$1 cap=$2; shift 2
    local left
    left=$(awk -v t="$TOTAL_CAP" -v e="$(elapsed)" -v r="$CAP_SUMMARY" 'BEGIN {printf "%d", t - e - r}')
    [ "$left" -lt "$cap" ] && cap=$left
    if [ "$cap" -lt 5 ]; then skip "$name" "no time left in the ${TOTAL_CAP} s budget"; return 1; fi
    say "=== $name (cap ${cap} s, at $(elapsed) s)"
    local t0 rc
    t0=$(date +%s.%N)
    timeout -k 5 "$cap" "$@" > "$OUTDIR/$name.log" 2>&1
    rc=$?
    local took
    took=$(awk -v s="$t0" -v n="$(date +%s.%N)" 'BEGIN {printf "%.1f", n - s}')
    grep -E '^(EVAL|throughput|train |synth|equivalence|deps)' "$OUTDIR/$name.log" | tee -a "$LOG"
    if [ "$rc" -ne 0 ]; then
        say "--- $name: exit $rc after $took s$([ "$rc" -eq 124 ] && echo ' (time cap)'); last lines:"
        tail -n 12 "$OUTDIR/$name.log" | tee -a "$LOG"
    fi
    record "$name" "$rc" "$took" "$cap"
    return "$rc"
}

# ------------------------------------------------------------------------------------------- (a) dependencies
PY=${PMNI_PYTHON:-}
if [ -z "$PY" ]; then
    for c in python3 python python3.11 /usr/bin/python3 /opt/conda/bin/python; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import torch' >/dev/null 2>&1; then PY=$c; break; fi
    done
fi
[ -n "$PY" ] || PY=python3
TARBALL=""
if [ -f "$CARRY/site.tar.xz" ]; then
    TARBALL=$CARRY/site.tar.xz
    mkdir -p "$WORK/site"
    export PYTHONPATH="$ROOT:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
say "gpu.sh: $([ "$DRY" = 1 ] && echo 'DRY RUN (cpu, tiny)' || echo 'real run') -> $OUTDIR; python: $PY"
# shellcheck disable=SC2016
if phase deps "$CAP_DEPS" bash -c 'set -e
    if [ -n "$1" ]; then
        "$3" -c "import platform, sys; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != \"x86_64\")" || {
            echo "deps: the carry holds CPython 3.11 x86_64 binaries; $3 is $("$3" -VV 2>&1) on $(uname -m)"; exit 3; }
        # the tarfile and lzma modules of python where the machine has no xz binary
        if command -v xz >/dev/null; then tar -xJf "$1" -C "$2"
        else "$3" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$1" "$2"; fi
        echo "deps: unpacked $1"
    else echo "deps: no carry: $3 as it is"; fi
    exec "$3" "$4" deps --json "$5"' _ "$TARBALL" "$WORK/site" "$PY" "$ROOT/benchmarks/gpu_bench.py" "$OUTDIR/deps.json"; then DEPS_OK=1; else DEPS_OK=0; fi
if [ "$DEPS_OK" = 1 ] && [ "$DEVICE" = cuda ] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    say "error: CUDA is not available to $PY (use --dry-run to check the script on CPU)"
    DEPS_OK=0
fi
BENCH=("$PY" "$ROOT/benchmarks/gpu_bench.py")

# ------------------------------------------------------------------------------------------- (e) equivalence
if [ "$DEPS_OK" = 1 ]; then
    phase equivalence "$CAP_EQUIV" "$PY" "$ROOT/tests/test_cuda_equivalence.py" --json "$OUTDIR/equivalence.json"
else
    skip equivalence "dependencies or CUDA missing"
fi

# ------------------------------------------------------------------------------------------- (b) dataset
DATA=$WORK/bunny$VIEWS
MESH=${PMNI_GPU_MESH:-}
if [ -z "$MESH" ] && [ -f "$CARRY/stanford-bunny.obj.gz" ]; then
    "$PY" -c "import gzip, shutil, sys; shutil.copyfileobj(gzip.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
        "$CARRY/stanford-bunny.obj.gz" "$WORK/stanford-bunny.obj" && MESH=$WORK/stanford-bunny.obj
fi
for m in "$ROOT/../shared/data/meshes/stanford-bunny.obj" "$ROOT/shared/data/meshes/stanford-bunny.obj"; do
    [ -n "$MESH" ] || { [ -f "$m" ] && MESH=$m; }
done
DATA_OK=0
if [ "$DEPS_OK" = 0 ]; then
    skip synth "dependencies or CUDA missing"
elif [ -z "$MESH" ]; then
    skip synth "no stanford-bunny.obj (carry gpu-carry/ or set PMNI_GPU_MESH)"
elif phase synth "$CAP_SYNTH" "${BENCH[@]}" synth --mesh "$MESH" --output "$DATA" --views "$VIEWS" --width "$WIDTH" \
        --height "$HEIGHT" --json "$OUTDIR/synth.json"; then
    DATA_OK=1
fi

# ------------------------------------------------------------------------------------------- (d) throughput
COMMON=(--data "$DATA" --device "$DEVICE" --preset "$PRESET" --rays "$RAYS")
[ "$DRY" = 1 ] && COMMON+=(--tiny)
if [ "$DATA_OK" = 1 ]; then
    # shellcheck disable=SC2086
    phase throughput "$CAP_THROUGHPUT" "${BENCH[@]}" throughput "${COMMON[@]}" --heldout $HELDOUT --warmup "$WARMUP" \
        --steps "$STEPS" --untimed "$UNTIMED" --json "$OUTDIR/throughput.json"
else
    skip throughput "no dataset"
fi
if [ "$ITERATIONS" = auto ]; then
    ITERATIONS=$("$PY" -c "
import json, sys
try:
    it = json.load(open('$OUTDIR/throughput.json'))['methods']['analytic']['it_per_s']
except Exception:
    print(0); sys.exit()
print(min(30000, max(1000, int(0.9 * $TRAIN_BUDGET * it))))" 2>/dev/null || echo 0)
fi
say "run length: ${ITERATIONS} iterations (0: the preset's)"

# ------------------------------------------------------------------------------------------- (c) training
TRAIN=(train "${COMMON[@]}" --iterations "$ITERATIONS" --budget "$TRAIN_BUDGET" --wall-cap "$WALL_CAP"
       --mesh-resolution "$MESH_RES" --threshold 0.2 --stop-at-threshold)
if [ "$DATA_OK" = 1 ]; then
    # shellcheck disable=SC2086
    phase calibrated "$CAP_CALIBRATED" "${BENCH[@]}" "${TRAIN[@]}" --heldout $HELDOUT --eval-at $EVAL_AT \
        --json "$OUTDIR/calibrated.json"
    # shellcheck disable=SC2086
    phase pose_free "$CAP_POSE_FREE" "${BENCH[@]}" "${TRAIN[@]}" --pose-init ring --normal-dir normal_camera_space_GT \
        --eval-at $EVAL_AT --json "$OUTDIR/pose_free.json"
else
    skip calibrated "no dataset"
    skip pose_free "no dataset"
fi

# ------------------------------------------------------------------------------------------- (f) summary
say "=== summary (at $(elapsed) s)"
if ! timeout "$CAP_SUMMARY" "${BENCH[@]}" summary --out "$OUTDIR" --device "$DEVICE" --time-cap "$TOTAL_CAP" \
        $([ "$DRY" = 1 ] && echo --dry-run) > "$OUTDIR/summary.log" 2>&1; then
    tail -n 12 "$OUTDIR/summary.log" | tee -a "$LOG"
    printf '{"dry_run": %s, "error": "summary failed, see summary.log and phases.tsv"}\n' \
        "$([ "$DRY" = 1 ] && echo true || echo false)" > "$OUTDIR/summary.json"
    exit 1
fi
tee -a "$LOG" < "$OUTDIR/summary.log"
say "gpu.sh: done in $(elapsed) s; results in $OUTDIR (summary.json)"
awk -F'\t' '$2 != "0" && $2 != "skipped" {bad = 1} END {exit bad}' "$OUTDIR/phases.tsv"
