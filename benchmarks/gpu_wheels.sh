#!/usr/bin/env bash
# Fetch, here, the wheels that the GPU machine's image lacks (it holds torch, accelerate, peft,
# torchmetrics, rich, pytest, hypothesis, scikit-learn... but not diffusers, textual or pydantic)
# into .whl/ for Python 3.12, so benchmarks/gpu_check.sh can install them there offline.
# Versions are the ones this checkout's .venv runs, so the GPU runs the code that was tested here.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PACKAGES="diffusers huggingface_hub hf-xet pydantic pydantic_core annotated-types typing-inspection tomlkit textual
textual-image textual-plot textual-hires-canvas climage linkify-it-py uc-micro-py mdit-py-plugins markdown-it-py
platformdirs importlib_metadata soundfile cffi pycparser pytest-textual-snapshot syrupy pytest-xdist execnet
import-linter grimp"
PINS=()
for name in $PACKAGES; do
    version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n "s/^Version: //p" || true)
    [ -n "$version" ] && PINS+=("$name==$version") || echo "not in .venv, skipped: $name"
done
rm -rf .whl && mkdir -p .whl
for pin in "${PINS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$pin" \
        || echo "no wheel for $pin"
done
du -sh .whl
