#!/usr/bin/env bash
# Render a run's report.html to a PNG with headless Chromium (Debian's `chromium` package).
# Usage: docs/make_screenshot.sh [REPORT_HTML] [OUTPUT_PNG] [WIDTH,HEIGHT]
# Defaults: results/default/evaluate/report.html, docs/report.png, 1200,3000 (pixels).
set -euo pipefail
report="${1:-results/default/evaluate/report.html}"
output="${2:-docs/report.png}"
size="${3:-1200,3000}"
browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
    echo "chromium not found; on Debian: apt-get install chromium" >&2
    exit 1
fi
if [ ! -f "$report" ]; then
    echo "$report: no such file; run the pipeline first (make run)" >&2
    exit 1
fi
flags=(--headless --disable-gpu --hide-scrollbars --window-size="$size")
if [ "$(id -u)" = 0 ]; then
    flags+=(--no-sandbox)  # Chromium refuses to run as root with its sandbox
fi
"$browser" "${flags[@]}" --screenshot="$(realpath -m "$output")" "file://$(realpath "$report")"
echo "wrote $output"
