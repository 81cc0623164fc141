#!/usr/bin/env bash
# Set-up for a fresh machine: creates ./.venv (once) and installs cfx_nb (editable) with its dev, explain
# and docs extras, every package at the exact version of the lock requirements/constraints.txt (the
# verified set; settings.ini only declares ranges). Running it again is cheap: it does nothing while
# settings.ini, setup.py, the lock and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PY=${PYTHON:-python3}
stamp=.venv/.cfx_nb-installed
want=$(cat settings.ini setup.py requirements/constraints.txt scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=$(mktemp)
pipq() {  # quiet pip that still fails loudly (with its full output) when an install fails
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log" >&2; echo "install.sh: pip install $* failed" >&2; exit 1
  fi
}
lock=requirements/constraints.txt
pipq -c "$lock" -e ".[dev,explain,docs]"
# torchattacks >= 3.4 pins requests~=2.25.1 (it never imports requests): install it without its deps
pipq -c "$lock" --no-deps torchattacks==3.5.1
# fail loudly if the stack does not import, or if a second torch slipped in
(cd /tmp && "$root/.venv/bin/python" -) <<'PY'
import importlib.metadata as md, torch, torchvision, torchattacks, diffusers, pytorch_grad_cam, cfx_nb
assert md.version('torch').startswith('2.14.1'), md.version('torch')
print(f"cfx_nb {cfx_nb.__version__}: torch {torch.__version__}, torchvision {torchvision.__version__}, cuda={torch.cuda.is_available()}")
PY
echo "$want" > "$stamp"
