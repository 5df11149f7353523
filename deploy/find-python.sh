#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 (gridpilot's OpenADR client needs it): $PYTHON if set,
# else the first that runs of python3.12, 3.13, 3.14, python3, else one installed by pyenv. Exits 1
# saying so when there is none.
set -uo pipefail
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
candidates=("${PYTHON:-}" python3.12 python3.13 python3.14 python3)
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
candidates+=($(ls -d "$root"/versions/3.1[2-4]*/bin/python3 2>/dev/null | sort -V))
for p in "${candidates[@]}"; do
  [ -n "$p" ] && ok "$p" && { command -v "$p"; exit 0; }
done
echo "find-python: gridpilot needs Python >= 3.12 and none was found (set PYTHON=/path/to/python3.12)" >&2
exit 1
