#!/usr/bin/env bash
# Tests of the Node adapter against the INSTALLED package: `npm pack`, then
# `npm install ./pthost-*.tgz --offline` in a fresh temporary project, then `node --test` there
# with the real pthost ($PTHOST_EXE). Last line: the totals, in the form the top-level test.sh
# counts ("Passed!  - Failed: F, Passed: P, Skipped: S, Total: T - pthost (node adapter)").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

summary() { # $1 Passed!|Failed!, then failed passed skipped total
  echo "$1  - Failed: $2, Passed: $3, Skipped: $4, Total: $5 - pthost (node adapter)"
}

if ! command -v node >/dev/null 2>&1; then
  echo "node-adapter: node is missing; installing Debian's nodejs and npm" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ -z "${PTHOST_EXE:-}" ] || [ ! -x "$PTHOST_EXE" ]; then
  echo "node-adapter: PTHOST_EXE must name the published pthost executable" >&2
  summary "Failed!" 1 0 0 1
  exit 1
fi
echo "node-adapter: node $(node --version), npm $(npm --version), pthost $PTHOST_EXE" >&2

work="$(mktemp -d "${TMPDIR:-/tmp}/pthost-node-adapter.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Pack the package as npm would publish it, and install that tarball offline in a new project.
(cd "$here" && npm pack --silent --pack-destination "$work" >/dev/null)
mkdir -p "$work/project"
cd "$work/project"
printf '{"name":"pthost-adapter-tests","version":"0.0.0","private":true}\n' > package.json
npm install "$work"/pthost-*.tgz --offline --no-audit --no-fund --silent
test -f node_modules/pthost/index.js && test -f node_modules/pthost/index.d.ts
if [ -e node_modules/pthost/test ]; then
  echo "node-adapter: the tarball must not carry the tests" >&2
  exit 1
fi
# The tests (and the README they extract an example from) live beside the installed package.
cp -r "$here/test" ./test
cp "$here/README.md" ./README.md

set +e
node --test --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$work/tap.txt" test/*.test.js 2>&1
status=$?
set -e

# Totals from the TAP report's closing comments (# tests, # pass, # fail, # skip).
count() { awk -v k="# $1" 'index($0, k " ") == 1 { n = $3 } END { print n + 0 }' "$work/tap.txt"; }
total=$(count tests); pass=$(count pass); fail=$(( $(count fail) + $(count cancelled) )); skip=$(( $(count skipped) + $(count todo) ))
if [ "$status" -ne 0 ] && [ "$fail" -eq 0 ]; then fail=1; fi
if [ "$status" -eq 0 ] && [ "$fail" -eq 0 ] && [ "$total" -gt 0 ]; then
  summary "Passed!" "$fail" "$pass" "$skip" "$total"
  exit 0
fi
summary "Failed!" "$fail" "$pass" "$skip" "$total"
exit 1
