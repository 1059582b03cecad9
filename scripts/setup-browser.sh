#!/usr/bin/env bash
# Debian's headless-capable Chromium, for the auditor web page's browser test.
set -euo pipefail
"$(dirname "$0")/install-debian-packages.sh" --no-install-recommends chromium fonts-dejavu-core
command -v chromium >/dev/null || { echo "chromium is not on PATH" >&2; exit 1; }
