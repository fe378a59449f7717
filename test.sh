#!/usr/bin/env bash
# Runs every PtHost test on a fresh Debian 12 machine with the .NET 10 SDK:
# installs the Debian programs the tests drive (when missing), publishes the real
# executable to out/pthost, and runs the whole test suite against it.
set -euo pipefail
cd "$(dirname "$0")"

packages=(curl ca-certificates
  # Tor compatibility: a real tor in a network namespace, PT 1.0 programs and upstream proxies
  tor iproute2 obfs4proxy microsocks dante-server tinyproxy-bin
  # QUIC (src/PtHost.Quic): runtime libraries, the ngtcp2 example peers, headers + gcc for the layout test
  libngtcp2-9 libngtcp2-crypto-gnutls2 libgnutls30 ngtcp2-server ngtcp2-client
  libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev gcc
  # TURN: coturn's turnutils_uclient / turnutils_peer
  coturn
  # JET: a real browser opens the relay's WebSocket
  chromium
  # RUD: X25519 through the system OpenSSL (libcrypto.so.3)
  libssl3
  # Python adapter (src/adapters/python): Debian's python3 with venv, and an offline pip build backend
  python3 python3-venv python3-setuptools python3-wheel
  # NativeAOT pthost: the native linker (gcc, above) and Debian's zlib (UseSystemZlib)
  zlib1g-dev
  # shapeshifter-dispatcher drop-in (spec/ipc.md §12): OpenVPN through the transparent modes, ping, PySocks' UDP socksocket
  openvpn iputils-ping python3-socks
  # Debian package (packaging/deb): dpkg-shlibdeps and objcopy, lintian, systemd-analyze, man for its Documentation check
  dpkg-dev binutils lintian systemd man-db
  # Relays at scale (docs/deploy.md): HAProxy in front of several instances, Prometheus scraping them
  haproxy prometheus)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "test.sh: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Two builds (packaging/README.md): the framework-dependent out/pthost (plugins, the shape of the dotnet
# tool) and the NativeAOT out-aot/pthost (the Debian package). Every process test runs the NativeAOT one,
# except the plugin tests, which need the framework-dependent one (spec/ipc.md §8.5); the adapters too.
dotnet publish src/PtHost -c Release -o out --nologo -v q
dotnet publish src/PtHost -c Release -r linux-x64 -p:PublishAot=true -o out-aot --nologo -v q
export PTHOST_EXE="$PWD/out-aot/pthost" PTHOST_FD_EXE="$PWD/out/pthost"
# The dotnet tool package, installed offline by tests/PtHost.Tests/Process/DotnetToolTests.cs.
rm -rf artifacts/tool
dotnet pack src/PtHost -c Release -p:PackAsTool=true -o artifacts/tool --nologo -v q
export PTHOST_TOOL_SOURCE="$PWD/artifacts/tool"

dotnet build PtHost.sln -c Release --nologo -v q

# The suites run one after the other: the reliability suite loads both cores by itself.
log=$(mktemp)
status=0
set +e
for project in tests/PtHost.Tests tests/PtHost.Client.Tests tests/PtHost.Reliability; do
  dotnet test "$project" -c Release --no-build --nologo 2>&1 | tee -a "$log"
  s=${PIPESTATUS[0]}
  [ "$s" -eq 0 ] || status=$s
done
# The Node adapter (src/adapters/node): packs it, installs the tarball offline in a temporary
# project and runs node --test there against out/pthost; its last line is counted below.
bash src/adapters/node/test.sh 2>&1 | tee -a "$log"
s=${PIPESTATUS[0]}
[ "$s" -eq 0 ] || status=$s
# Python adapter: its own venv and unittest run against out/pthost (src/adapters/python/test.sh).
bash src/adapters/python/test.sh 2>&1 | tee -a "$log"; s=${PIPESTATUS[0]}; [ "$s" -eq 0 ] || status=$s
set -e
# One closing line for CI: totals over every test assembly.
awk '/(Passed|Failed)!  -/ { for (i = 1; i <= NF; i++) { if ($i == "Failed:") f += $(i+1); if ($i == "Passed:") p += $(i+1); if ($i == "Skipped:") s += $(i+1) } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
rm -f "$log"
exit "$status"
