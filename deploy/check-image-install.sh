#!/usr/bin/env bash
# Runs the Dockerfile's own install command in a fresh virtualenv (no Docker engine needed),
# then starts the installed `gridpilot`: proof that the image's install step works.
set -euo pipefail
cd "$(dirname "$0")/.."
# The build stage's command, e.g. "python -m venv /opt/gridpilot && /opt/gridpilot/bin/pip install --no-cache-dir ."
install=$(sed -n '/^RUN python -m venv/,/[^\\]$/p' Dockerfile | sed 's/^RUN //; s/\\$//' | tr -d '\n' | tr -s ' ')
[ -n "$install" ] || { echo "no install command found in the Dockerfile" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The image copies these into /src and installs from there; so do we, into a scratch prefix.
cp -r pyproject.toml README.md controller drivers "$work/"
cd "$work"
command=${install//\/opt\/gridpilot/$work/venv}
echo "+ $command"
PYTHON=${PYTHON:-python3}
bash -c "${command/#python /$PYTHON }"
"$work/venv/bin/gridpilot" --help >/dev/null
"$work/venv/bin/gridpilot" check-config "$OLDPWD/deploy/site.compose.yaml" >/dev/null
echo "the Dockerfile's install command works: gridpilot runs from a fresh virtualenv"
