#!/usr/bin/env bash
# Prepare the carry of benchmarks/gpu.sh for a GPU machine that has torch but no nerfstudio and no registry:
#   gpu-carry/site.tar.xz          the core's dependencies besides torch (cp311, manylinux x86_64), installed with
#                                  pip --target, test folders stripped, xz-compressed: 38 MB instead of 72 MB of wheels
#   gpu-carry/stanford-bunny.obj.gz  the mesh gpu.sh renders its 20-view dataset from
#   gpu-carry/MANIFEST.txt         the wheels (name, bytes, sha256) and the carry's total with the working tree
# gpu-carry/ is git-ignored; carry it with the device tool (carry: ["gpu-carry"]). The tree + carry must stay under
# 64 MiB: this script measures both and fails if they do not. Usage: bash benchmarks/gpu_carry.sh [DEST]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/gpu-carry}
CACHE=${PMNI_WHEEL_CACHE:-${TMPDIR:-/tmp}/pmni-gpu-wheels}
PY=${PMNI_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
LIMIT=$((64 * 1024 * 1024))
# The versions pinned in pyproject.toml (numpy<2: the last 1.x), plus what they import at run time: packaging
# (pypose), psutil (pmni-synth's staging), rtree (pmni-eval's ICP alignment), embreex (the fast ray caster).
WHEELS=(
    numpy==1.26.4 scipy==1.17.1 OpenEXR==3.5.3 trimesh==5.2.0 PyMCubes==0.1.6 pypose==0.9.5 packaging==26.4
    pypng==0.20220715.0 psutil==7.2.2 rtree==1.4.1 embreex==4.4.0.post1
)
TARGET=(--python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none --only-binary :all:
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any)
MESH=${PMNI_GPU_MESH:-}
for m in "$ROOT/../shared/data/meshes/stanford-bunny.obj" "$ROOT/shared/data/meshes/stanford-bunny.obj"; do
    [ -n "$MESH" ] || { [ -f "$m" ] && MESH=$m; }
done
[ -n "$MESH" ] || { echo "error: stanford-bunny.obj not found (set PMNI_GPU_MESH)" >&2; exit 1; }

mkdir -p "$DEST" "$CACHE"
echo "==> wheels (${#WHEELS[@]}) into $CACHE"
"$PY" -m pip download --disable-pip-version-check --no-deps "${TARGET[@]}" -d "$CACHE" "${WHEELS[@]}" | grep -v '^  ' || true
files=()
for spec in "${WHEELS[@]}"; do
    name=${spec%%==*}; version=${spec##*==}
    pattern=$(echo "$name" | tr 'A-Z-' 'a-z_')-$version-
    f=$(cd "$CACHE" && ls | awk -v p="$pattern" 'index(tolower($0), tolower(p)) == 1 && /\.whl$/' | head -n 1)
    [ -n "$f" ] || { echo "error: no wheel for $spec in $CACHE" >&2; exit 1; }
    files+=("$CACHE/$f")
done
manifest=$(for f in "${files[@]}"; do printf '%s\t%s\t%s\n' "$(basename "$f")" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-64)"; done)

if [ -f "$DEST/site.tar.xz" ] && [ -f "$DEST/MANIFEST.txt" ] && grep -qF "$manifest" "$DEST/MANIFEST.txt"; then
    echo "==> $DEST/site.tar.xz is up to date"
else
    echo "==> installing into a staging folder, stripping test folders"
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    "$PY" -m pip install --disable-pip-version-check --quiet --no-deps --no-compile --no-index "${TARGET[@]}" \
        --target "$stage/site" "${files[@]}"
    find "$stage/site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
    rm -rf "$stage/site/bin"
    echo "==> compressing ($(du -sh "$stage/site" | cut -f1) unpacked; xz takes a minute or two)"
    tar -C "$stage/site" -cf - . | xz -T0 -6 -c > "$DEST/site.tar.xz.part"
    mv "$DEST/site.tar.xz.part" "$DEST/site.tar.xz"
fi
gzip -9 -c "$MESH" > "$DEST/stanford-bunny.obj.gz"

wheel_bytes=$(echo "$manifest" | awk -F'\t' '{s += $2} END {print s}')
carry_bytes=$(find "$DEST" -type f ! -name MANIFEST.txt -printf '%s\n' | awk '{s += $1} END {print s}')
# What the device tool copies besides the carry: tracked files and untracked ones git does not ignore.
tree_bytes=$(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}')
total=$((carry_bytes + tree_bytes + 4096))
{
    echo "# wheels (name, bytes, sha256); python 3.11, manylinux x86_64"
    echo "$manifest"
    echo "# wheels total: $wheel_bytes bytes"
    echo "# carry (site.tar.xz + mesh): $carry_bytes bytes; working tree: $tree_bytes bytes"
    echo "# tree + carry: $total bytes of $LIMIT ($(awk -v t="$total" 'BEGIN {printf "%.1f", t / 1048576}') MiB of 64)"
} > "$DEST/MANIFEST.txt"
cat "$DEST/MANIFEST.txt"
[ "$total" -lt "$LIMIT" ] || { echo "error: tree + carry exceed 64 MiB" >&2; exit 1; }
echo "==> carry ready: $DEST (device tool: carry [\"$(basename "$DEST")\"])"
