#!/usr/bin/env bash
# Regenerate example_reports/: the demo report (HTML, PDF, JSON) on the built-in default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh
rm -rf example_reports/default
.venv/bin/auditor run --out example_reports/default --seed 0
