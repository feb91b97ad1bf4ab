#!/usr/bin/env bash
# Create .venv and install auditor with everything it needs, on a fresh machine or an old venv.
#   scripts/setup-env.sh [EXTRA]      EXTRA: "test" adds the test-only dependencies
# AUDITOR_TORCH overrides the torch pair, e.g. AUDITOR_TORCH="torch==2.9.1 torchvision==0.24.1".
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}
python=${PYTHON:-python3}
if [[ -z ${AUDITOR_TORCH:-} ]]; then
  case "$(uname -m)" in
    aarch64|arm64) AUDITOR_TORCH="torch==2.9.1 torchvision==0.24.1" ;;
    *) AUDITOR_TORCH="torch==2.14.1 torchvision==0.29.1" ;;
  esac
fi
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
pip install --upgrade pip
# shellcheck disable=SC2086
pip install $AUDITOR_TORCH
if [[ $extra == test ]]; then
  pip install -e ".[test]"
  # quantus requires the GUI build opencv-python, which links X11/GL and overwrites the cv2 files of
  # opencv-python-headless: install it without its requirements (the test extra lists the others)
  pip install --no-deps "quantus==0.6.0"
else
  pip install -e .
fi
# WeasyPrint needs the system's Pango; install it where it is missing and apt-get is there.
if ! .venv/bin/python -c "import weasyprint" >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && apt-get install -y -qq libpango-1.0-0 libpangoft2-1.0-0 >/dev/null
  fi
  .venv/bin/python -c "import weasyprint" || { echo "WeasyPrint cannot load Pango: install libpango-1.0-0" >&2; exit 1; }
fi
.venv/bin/python -c "import auditor, torch; print(f'auditor {auditor.__version__} with torch {torch.__version__} ready in .venv')"
