#!/usr/bin/env bash
# Build the one-folder desktop bundle with PyInstaller into dist/sft-studio/ (macOS: also dist/SFT Studio.app).
#
#   bash packaging/build.sh                  # uses .venv (or $PYTHON), installs pyinstaller there if missing
#   bash packaging/build.sh --smoke          # then runs packaging/smoke_check.py on the result
#   SFT_STUDIO_BUNDLE_GGUF=1 bash packaging/build.sh   # also bundle the offline SmolLM2 GGUF (~94 MB)
#
# Build on the platform you ship for (PyInstaller does not cross-compile), in an environment that has the
# torch build you want to ship (CUDA wheel on Linux/Windows GPU machines; the default wheel on macOS).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif [ -x .venv/Scripts/python.exe ]; then
  PY=.venv/Scripts/python.exe
else
  echo "error: no .venv; create it with the README's set-up command or set PYTHON=/path/to/python" >&2
  exit 2
fi
if ! "$PY" -c "import PyInstaller" 2>/dev/null; then
  echo "+ installing pyinstaller into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install --quiet "pyinstaller>=6.10" "pyinstaller-hooks-contrib>=2024.8"
fi
# Make sure the icons are rendered from the SVG (they are committed; this only fills gaps).
for size in 16 24 32 48 64 128 256 512; do
  if [ ! -f "resources/icons/sft-studio-$size.png" ]; then
    "$PY" packaging/render_icons.py
    break
  fi
done
start=$(date +%s)
echo "+ $PY -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build packaging/sft-studio.spec"
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build packaging/sft-studio.spec
end=$(date +%s)
echo "built dist/sft-studio in $((end - start)) s, $(du -sh dist/sft-studio | cut -f1)"
if [ -d "dist/SFT Studio.app" ]; then
  echo "macOS app: dist/SFT Studio.app"
fi
if [ "${1:-}" = "--smoke" ]; then
  "$PY" packaging/smoke_check.py --bundle "$ROOT/dist/sft-studio"
fi
