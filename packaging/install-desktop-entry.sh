#!/usr/bin/env bash
# Add SFT Studio to the Linux application menu (per user, freedesktop.org paths): the .desktop file and the
# icon in every size. `sft-studio` must be on PATH (pip/pipx put it there; for the bundle, link
# dist/sft-studio/sft-studio into ~/.local/bin). Undo with: bash packaging/install-desktop-entry.sh --remove
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
SIZES="16 24 32 48 64 128 256 512"
if [ "${1:-}" = "--remove" ]; then
  rm -f "$DATA/applications/sft-studio.desktop" "$DATA/icons/hicolor/scalable/apps/sft-studio.svg"
  for s in $SIZES; do rm -f "$DATA/icons/hicolor/${s}x${s}/apps/sft-studio.png"; done
else
  install -Dm644 resources/sft-studio.desktop "$DATA/applications/sft-studio.desktop"
  install -Dm644 resources/icons/sft-studio.svg "$DATA/icons/hicolor/scalable/apps/sft-studio.svg"
  for s in $SIZES; do
    install -Dm644 "resources/icons/sft-studio-$s.png" "$DATA/icons/hicolor/${s}x${s}/apps/sft-studio.png"
  done
  command -v sft-studio >/dev/null || echo "note: sft-studio is not on PATH; the menu entry will not start until it is" >&2
fi
command -v update-desktop-database >/dev/null && update-desktop-database -q "$DATA/applications" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$DATA/icons/hicolor" || true
echo "done: $DATA/applications/sft-studio.desktop"
