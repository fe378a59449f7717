#!/usr/bin/env bash
# Builds pthost_<version>_amd64.deb around the NativeAOT pthost (packaging/README.md): the binary,
# pthost(1), bash completion, hardened systemd units for the three relays (and template units for
# several zephyr and jet instances on one machine) and their configuration.
# usage: packaging/deb/build.sh [--binary PATH] [--out DIR]
#   --binary PATH  an already published NativeAOT pthost (default: publish one into artifacts/aot)
#   --out DIR      where the .deb goes (default artifacts/deb); its path is the last line on stdout
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
binary=""
out="$repo/artifacts/deb"
while (($#)); do
  case $1 in
    --binary) binary=$(realpath "$2"); shift 2 ;;
    --out) out=$(realpath -m "$2"); shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--out DIR]" >&2; exit 64 ;;
  esac
done
if [ -z "$binary" ]; then
  dotnet publish "$repo/src/PtHost" -c Release -r linux-x64 -p:PublishAot=true -o "$repo/artifacts/aot" --nologo -v q >&2
  binary="$repo/artifacts/aot/pthost"
fi
# The package holds the native build only: a framework-dependent one has its pthost.dll beside it.
if [ -e "$(dirname "$binary")/pthost.dll" ]; then
  echo "deb: $binary is the framework-dependent build; publish with -p:PublishAot=true" >&2
  exit 65
fi
version=$("$binary" --version | sed -n 's/^pthost \([0-9][^ ]*\) .*/\1/p')
[ -n "$version" ] || { echo "deb: cannot read the version from $binary --version" >&2; exit 65; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/pthost"
install -D -m 0755 "$binary" "$root/usr/bin/pthost"
# The linker's .comment section is of no use in a package (lintian: binary-has-unneeded-section).
objcopy --remove-section=.comment "$root/usr/bin/pthost"
install -d -m 0755 "$root/usr/share/man/man1" "$root/usr/share/doc/pthost"
sed "s/@VERSION@/$version/" "$here/pthost.1" | gzip -9n > "$root/usr/share/man/man1/pthost.1.gz"
install -D -m 0644 "$here/pthost.bash-completion" "$root/usr/share/bash-completion/completions/pthost"
for relay in zephyr jet asport; do
  install -D -m 0644 "$here/systemd/pthost-$relay.service" "$root/lib/systemd/system/pthost-$relay.service"
  install -D -m 0644 "$here/etc/default-pthost-$relay" "$root/etc/default/pthost-$relay"
done
# Template units for several instances on one machine (docs/deploy.md §2): pthost-zephyr@N, pthost-jet@N.
for relay in zephyr jet; do
  install -D -m 0644 "$here/systemd/pthost-$relay@.service" "$root/lib/systemd/system/pthost-$relay@.service"
done
install -D -m 0644 "$here/etc/jet.json" "$root/etc/pthost/jet.json"
install -D -m 0644 "$here/etc/zephyr.json" "$root/etc/pthost/zephyr.json"
install -m 0644 "$here/copyright" "$root/usr/share/doc/pthost/copyright"
date=$(git -C "$repo" log -1 --format=%aD 2>/dev/null || date -R)
commit=$("$binary" --version | sed -n 's/.*(commit \([^)]*\)).*/\1/p')
printf 'pthost (%s) unstable; urgency=medium\n\n  * Built from commit %s (packaging/deb/build.sh).\n\n -- PtHost maintainers <maintainers@pthost.invalid>  %s\n' \
  "$version" "$commit" "$date" | gzip -9n > "$root/usr/share/doc/pthost/changelog.gz"

# Depends: the libraries the binary links (dpkg-shlibdeps) and the ones it opens at run time
# (P/Invoke, src/PtHost.Quic and transports/Rud): ngtcp2 + its GnuTLS crypto, GnuTLS, OpenSSL's libcrypto.
mkdir -p "$work/src/debian"
printf 'Source: pthost\n\nPackage: pthost\nArchitecture: amd64\n' > "$work/src/debian/control"
linked=$(cd "$work/src" && dpkg-shlibdeps -O "$root/usr/bin/pthost" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
depends="$linked, libngtcp2-9, libngtcp2-crypto-gnutls2, libgnutls30, libssl3"

install -d -m 0755 "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: pthost
Version: $version
Architecture: amd64
Maintainer: PtHost maintainers <maintainers@pthost.invalid>
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Description: Pluggable Transports 2.0 host and relays
 pthost is the child process an application (or Tor) starts to reach the
 network through pluggable transports: SOCKS5 and TURN front ends, the plain,
 zephyr, jet, asport and rud transports, and PT 1.0 programs such as
 obfs4proxy. It also runs the zephyr, jet and asport relays, shipped here as
 hardened systemd services.
 .
 This is the NativeAOT build: one native executable, no .NET runtime needed.
 It does not load managed plugins (the dotnet tool pthost does).
CONTROL
printf '/etc/default/pthost-asport\n/etc/default/pthost-jet\n/etc/default/pthost-zephyr\n/etc/pthost/jet.json\n/etc/pthost/zephyr.json\n' > "$root/DEBIAN/conffiles"
# systemd reads new or changed units only after a reload (what debhelper's snippets do).
for script in postinst postrm; do
  cat > "$root/DEBIAN/$script" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
SCRIPT
  chmod 0755 "$root/DEBIAN/$script"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/pthost_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"
