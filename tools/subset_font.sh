#!/usr/bin/env bash
# Makes assets/fonts/DejaVuSans-subset.ttf, the font amg draws the text of its pictures with: DejaVu
# Sans (Debian's fonts-dejavu-core) cut down to the characters amg writes — printable ASCII,
# Latin-1, Greek, and a few symbols (× − · → ≈ ± ≤ ≥ √ ‖ Σ – —) — so the binary carries ~40 KB
# instead of 760 KB. Needs fonttools (pip install fonttools).
#   tools/subset_font.sh [/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf] [python]
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}
py=${2:-python3}
"$py" -m fontTools.subset "$src" \
    --unicodes="U+0020-007E,U+00A0-00FF,U+0391-03C9,U+00D7,U+2212,U+00B7,U+2192,U+2248,U+00B1,U+2264,U+2265,U+221A,U+2016,U+03A3,U+2013,U+2014,U+2026" \
    --layout-features='kern' --no-hinting --desubroutinize \
    --output-file=assets/fonts/DejaVuSans-subset.ttf
ls -l assets/fonts/DejaVuSans-subset.ttf
