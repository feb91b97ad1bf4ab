#!/usr/bin/env bash
# Set up .venv and write the demo report (EfficientNet-Lite0 on the bundled photos) to audit-report/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh
.venv/bin/auditor run --out "${1:-audit-report}" --figures
