#!/usr/bin/env bash
# Compatibility check of the declared dependency ranges (settings.ini `requirements`): install cfx_nb
# (plain `pip install .`, no lock) into an environment that already holds older, compatible releases of
# the heavy packages, check that pip replaced none of them, then run the core tests against that install.
#
# usage: bash scripts/compat_check.sh [TEST_FILE ...]      (default: the core tests listed below)
# env:   COMPAT_ENV  the environment (default /tmp/cfx_nb_compat; created when missing, reused otherwise)
#        COMPAT_SET  the older set installed first (default below; torch 2.13.0 here is the CPU wheel that
#                    lies on this project's machines, elsewhere add PIP_ARGS to fetch a CPU build)
#        PIP_ARGS    extra pip options for that first install, e.g.
#                    "--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"
# Takes about 2 min and 1.3 GB on disk the first time; the tests run with one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
env=${COMPAT_ENV:-/tmp/cfx_nb_compat}
old=${COMPAT_SET:-"torch==2.13.0 torchvision==0.28.0 numpy==2.4.1 pandas==2.2.3 scikit-learn==1.6.1"}
keys="torch torchvision numpy pandas scikit-learn"
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(test_core.py test_attacks.py test_scfe.py test_lfp.py test_training.py)

[ -x "$env/bin/python" ] || python3 -m venv "$env"
pip() { "$env/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
versions() {  # name==version of the key packages, as installed in $env
  (cd /tmp && "$env/bin/python" - $keys) <<'PY'
import sys, importlib.metadata as md
for k in sys.argv[1:]:
    try: print(f"{k}=={md.version(k)}")
    except md.PackageNotFoundError: print(f"{k} (absent)")
PY
}
# shellcheck disable=SC2086
pip install -q ${PIP_ARGS:-} $old pytest
before=$(versions)
echo "== older set in $env:"; echo "$before"
echo "== pip install --dry-run . (what installing cfx_nb would add or change):"
# from a copy of the package's sources, so that the build leaves nothing in this checkout
src=$(mktemp -d); trap 'rm -rf "$src"' EXIT
cp -r settings.ini setup.py MANIFEST.in README.md LICENSE cfx_nb "$src"/
pip install --dry-run "$src" | grep -E "^(Would install|ERROR)" || true
pip install -q "$src"
after=$(versions)
if [ "$before" != "$after" ]; then
  echo "compat_check: installing cfx_nb changed the older set:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "== unchanged after the install; cfx_nb from: $(cd /tmp && "$env/bin/python" -c 'import cfx_nb; print(cfx_nb.__file__)')"
# run from /tmp so that `import cfx_nb` finds the installed copy, not this checkout
cd /tmp && OMP_NUM_THREADS=1 "$env/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]/#/$root/tests/}"
