#!/usr/bin/env bash
# The whole suite. Exit non-zero on any failure, including "no tests ran" (pytest 5).
set -uo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"
mkdir -p artifacts
"$top/.venv/bin/pytest" -p no:cacheprovider -ra --durations=40 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: no tests were collected: failing" >&2
  exit 1
fi
exit "$rc"
