#!/usr/bin/env bash
# The Python adapter's tests: a temporary virtual environment made with Debian's python3, the
# package installed into it offline (pip --no-index, no build isolation: python3-setuptools and
# python3-wheel come from Debian), then python3 -m unittest against $PTHOST_EXE.
# The last line is the totals line the top-level test.sh adds up.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python=/usr/bin/python3
label="pthost (python adapter)"

setup_failed() {
  echo "python adapter: $1" >&2
  echo "Failed!  - Failed: 1, Passed: 0, Skipped: 0, Total: 1 - $label"
  exit 1
}

[ -n "${PTHOST_EXE:-}" ] && [ -x "$PTHOST_EXE" ] || setup_failed "PTHOST_EXE must name the published pthost"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# pip builds in the source directory; a copy keeps build/ and *.egg-info out of the tree.
cp -r "$here" "$work/src"
rm -rf "$work/src/build" "$work/src"/*.egg-info
"$python" -m venv --system-site-packages "$work/venv" || setup_failed "cannot create a venv with $python (python3-venv)"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check --root-user-action=ignore \
  --no-index --no-build-isolation "$work/src" \
  || setup_failed "pip install --no-index of src/adapters/python failed (python3-setuptools, python3-wheel)"

cd "$work"
export PYTHONDONTWRITEBYTECODE=1
PTHOST_ADAPTER_SOURCE="$here" "$work/venv/bin/python" "$here/tests/run.py"
