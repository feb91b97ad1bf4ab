#!/usr/bin/env bash
# Set up .venv with the test dependencies and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh test
# pdftotext checks that PDF tables keep every column (tests/test_pdf_layout.py)
if ! command -v pdftotext >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null && apt-get install -y -qq poppler-utils >/dev/null
fi
# pdflatex compiles --figures' figures.tex inside a report document (tests/test_latex.py)
if ! command -v pdflatex >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null && apt-get install -y -qq texlive-latex-base texlive-latex-recommended >/dev/null
fi
.venv/bin/python -m pytest "$@"
