#!/usr/bin/env bash
# Runs the Dockerfile's own install command in a fresh virtualenv (no Docker engine needed),
# then starts the installed `gridpilot`: proof that the image's install step works.
set -euo pipefail
cd "$(dirname "$0")/.."
# The build stage's command, e.g. "python -m venv /opt/gridpilot && /opt/gridpilot/bin/pip install --no-cache-dir ."
install=$(sed -n '/^RUN python -m venv/,/[^\\]$/p' Dockerfile | sed 's/^RUN //; s/\\$//' | tr -d '\n' | tr -s ' ')
[ -n "$install" ] || { echo "no install command found in the Dockerfile" >&2; exit 1; }
PYTHON=${PYTHON:-$(deploy/find-python.sh)}  # the image's is 3.12
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The image copies these into /src and installs from there; so do we, into a scratch prefix.
cp -r pyproject.toml README.md controller drivers "$work/"
cd "$work"
command=${install//\/opt\/gridpilot/$work/venv}
echo "+ $command"
bash -c "${command/#python /$PYTHON }"
"$work/venv/bin/gridpilot" --help >/dev/null
"$work/venv/bin/gridpilot" check-config "$OLDPWD/deploy/site.compose.yaml" >/dev/null
# The compliance report's shipped profiles are in the package: a replay, recorded, reported
# (from / so that the installed package is the one imported).
(cd / && "$work/venv/bin/gridpilot" replay "$OLDPWD/drivers/sim/traces/h200_train_1p7b.csv" \
    --no-bound --record "$work/replayed" >/dev/null \
  && "$work/venv/bin/gridpilot" report --data-dir "$work/replayed" --json \
    | "$work/venv/bin/python" -c 'import json, sys; print("report:", json.load(sys.stdin)["result"])' \
  && "$work/venv/bin/python" -c 'from controller.report.profile import BUILTIN, builtin_profile
for name in BUILTIN: builtin_profile(name)
print("profiles:", ", ".join(BUILTIN))')
# The operator console: every file of controller/ui is in the installed package, and the
# installed API serves each (run from / so that the copy in $work is not the one imported).
(cd "$OLDPWD/controller/ui" && find . -type f | sed 's|^\./||') >"$work/ui-files"
(cd / && "$work/venv/bin/python" - "$work/ui-files" <<'EOF'
import asyncio
import sys
import tempfile
import types
from pathlib import Path

import httpx

import controller.api as api
from controller.opsdb import OpsDB

assert "site-packages" in api.__file__, f"not the installed copy: {api.__file__}"
files = Path(sys.argv[1]).read_text().split()


async def check(app) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gridpilot") as client:
        assert (await client.get("/")).status_code == 200, "/ (the console's page)"
        for name in files:
            served = await client.get(f"/ui/{name}")
            assert served.status_code == 200 and served.content, f"/ui/{name}: {served.status_code}"


with tempfile.TemporaryDirectory() as tmp:
    db = OpsDB(Path(tmp) / "ops.sqlite")
    asyncio.run(check(api.create_app(types.SimpleNamespace(fresh_s=0.1), db, Path(tmp))))
print(f"the installed API serves the operator console: / and {len(files)} files under /ui/")
EOF
)
echo "the Dockerfile's install command works: gridpilot runs from a fresh virtualenv"
