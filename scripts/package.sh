#!/usr/bin/env bash
# Builds the clove packages into target/packages/ (a .deb and an .rpm) and proves them on this
# machine. Installs the tools it needs first, once per machine. CI runs it (.ci/run).
#
#   scripts/package.sh           build, then verify (verify needs root: it installs the .deb)
#   scripts/package.sh build     build only
#   scripts/package.sh verify    verify the packages built before
#
# Verify: the .deb's files, owners and modes (installed with dpkg -i), clove --version from
# /usr/bin, the config kept over a reinstall, systemd-analyze verify of the four units (any
# output fails), lintian (overrides in packaging/debian/lintian-overrides, each explained), the
# installed daemon under packaging/test/fake-systemd.py (a harness that plays systemd), then
# dpkg -r and dpkg -P and a check that nothing is left but what policy keeps; the .rpm's
# metadata (rpm -qpi, -qpl, -K) and an install into a scratch root (rpm --root).
#
# Set CLOVE_KEEP_INSTALLED=1 to leave the .deb installed after a failure, for a look around.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
OUT=target/packages
GEN=$OUT/generated
MARKER=$OUT/.deb-installed-by-package-sh
START=$SECONDS
SCRATCH=$(mktemp -d -t clove-package.XXXXXX) # removed at exit, whatever happens

step() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - START))"; }
die() {
	echo "package.sh: FAILED: $*" >&2
	exit 1
}
human() { numfmt --to=iec-i --suffix=B "$1"; }

install_tools() {
	step "tools"
	local need_apt=()
	command -v rpm >/dev/null || need_apt+=(rpm)
	command -v lintian >/dev/null || need_apt+=(lintian)
	command -v dpkg-shlibdeps >/dev/null || need_apt+=(dpkg-dev) # cargo-deb's $auto depends
	command -v readelf >/dev/null || need_apt+=(binutils)
	command -v python3 >/dev/null || need_apt+=(python3)
	command -v systemd-analyze >/dev/null || need_apt+=(systemd)
	command -v man >/dev/null || need_apt+=(man-db) # systemd-analyze checks Documentation=man:
	command -v deb-systemd-helper >/dev/null || need_apt+=(init-system-helpers)
	if [ ${#need_apt[@]} -gt 0 ]; then
		[ "$(id -u)" = 0 ] || die "missing ${need_apt[*]}: install them with apt-get as root"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
	fi
	if ! cargo deb --version 2>/dev/null | grep -qxF "cargo-deb $CARGO_DEB_VERSION"; then
		cargo install --locked "cargo-deb@$CARGO_DEB_VERSION"
	fi
	if ! cargo generate-rpm --version 2>/dev/null |
		grep -qxF "cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION"; then
		cargo install --locked "cargo-generate-rpm@$CARGO_GENERATE_RPM_VERSION"
	fi
	echo "rpm $(rpm --version | awk '{print $3}'), lintian $(lintian --version | awk '{print $2}')," \
		"cargo-deb $CARGO_DEB_VERSION, cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION"
}

target_dir() {
	cargo metadata --format-version 1 --no-deps |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

build() {
	step "build (profile dist: release, stripped)"
	# The C parts (SQLite, ring) get the hardening Debian gives C code: fortified libc calls
	# and stack protection.
	CFLAGS="${CFLAGS:--O2} -D_FORTIFY_SOURCE=2 -fstack-protector-strong" \
		cargo build --locked --profile dist --bin clove
	local bin
	bin="$(target_dir)/dist/clove"
	step "generate man pages, completions and the default config"
	rm -rf "$GEN" "$OUT"/*.deb "$OUT"/*.rpm
	mkdir -p "$GEN"
	"$bin" generate man "$GEN/man"
	gzip -9n "$GEN"/man/*.1
	"$bin" generate completions "$GEN/completions"
	! grep -l generate "$GEN"/completions/* || die "the completions offer the internal 'generate'"
	"$bin" generate config >"$GEN/clove.toml"
	debian_changelog >"$GEN/changelog"
	step "cargo deb, cargo generate-rpm"
	cargo deb --locked --profile dist --no-build --output "$OUT/"
	add_md5sums "$(deb_file)"
	cargo generate-rpm --profile dist --output "$OUT/"
	step "sizes"
	local f
	for f in "$OUT"/*.deb "$OUT"/*.rpm "$bin"; do
		printf '%-48s %10s bytes  %s\n' "$(basename "$f")" "$(stat -c %s "$f")" "$(human "$(stat -c %s "$f")")"
	done
	if readelf -S "$bin" | grep -qE '\.symtab|\.debug_'; then
		die "$bin is not stripped"
	fi
}

# A Debian changelog with one entry: this version, built from this commit.
debian_changelog() {
	local version maintainer commit date
	version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
	maintainer=$(sed -n 's/^maintainer = "\(.*\)"/\1/p' Cargo.toml | head -1)
	commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
	date=$(git log -1 --format=%aD 2>/dev/null || date -R)
	printf 'clove (%s-1) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- %s  %s\n' \
		"$version" "$commit" "$maintainer" "$date"
}

# cargo-deb writes no md5sums; dpkg --verify and debsums need them. Repack with them added.
add_md5sums() {
	local deb=$1 dir=$SCRATCH/repack
	rm -rf "$dir"
	mkdir "$dir"
	dpkg-deb --raw-extract "$deb" "$dir/pkg"
	(cd "$dir/pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
		xargs -0 md5sum >DEBIAN/md5sums)
	chmod 644 "$dir/pkg/DEBIAN/md5sums"
	dpkg-deb --root-owner-group -Zxz --build "$dir/pkg" "$deb" >/dev/null
}

deb_file() { ls "$OUT"/clove_*.deb; }
rpm_file() { ls "$OUT"/clove-*.rpm; }

# What the .deb installs, one line per file: mode owner:group path (a glob for the man pages).
expected_deb_files() {
	cat <<'EOF'
755 root:root /usr/bin/clove
644 root:root /usr/lib/systemd/system/clove.service
644 root:root /usr/lib/systemd/system/clove.socket
644 root:root /usr/lib/systemd/user/clove.service
644 root:root /usr/lib/systemd/user/clove.socket
644 root:root /usr/lib/sysusers.d/clove.conf
644 root:root /etc/clove/clove.toml
644 root:root /usr/share/man/man1/clove.1.gz
644 root:root /usr/share/man/man1/clove-*.1.gz
644 root:root /usr/share/bash-completion/completions/clove
644 root:root /usr/share/zsh/vendor-completions/_clove
644 root:root /usr/share/fish/vendor_completions.d/clove.fish
644 root:root /usr/share/doc/clove/README.md
644 root:root /usr/share/doc/clove/copyright
644 root:root /usr/share/doc/clove/changelog.Debian.gz
644 root:root /usr/share/lintian/overrides/clove
EOF
}

# Every installed file matches a line of expected_deb_files (mode, owner, group), every line
# matches a file, and every directory the package made is root:root 0755.
check_deb_files() {
	local path mode owner pattern want_mode want_owner matched
	local -A seen=()
	while IFS= read -r path; do
		[ "$path" = "/." ] && continue
		[ -e "$path" ] || die "$path is listed by dpkg -L but missing"
		read -r mode owner < <(stat -c '%a %U:%G' "$path")
		if [ -d "$path" ]; then
			[ "$mode $owner" = "755 root:root" ] || die "directory $path is $mode $owner"
			continue
		fi
		matched=
		while read -r want_mode want_owner pattern; do
			# shellcheck disable=SC2053 # the pattern is a glob on purpose
			if [[ $path == $pattern ]]; then
				[ "$mode $owner" = "$want_mode $want_owner" ] ||
					die "$path is $mode $owner, expected $want_mode $want_owner"
				seen[$pattern]=1
				matched=1
				break
			fi
		done < <(expected_deb_files)
		[ -n "$matched" ] || die "unexpected file in the package: $path"
	done < <(dpkg -L clove)
	while read -r _ _ pattern; do
		[ -n "${seen[$pattern]:-}" ] || die "the package lacks $pattern"
	done < <(expected_deb_files)
	echo "every file and directory has the expected owner and mode:"
	dpkg -L clove | xargs stat -c '  %A %U:%G %n' | grep -v ' /\.$'
}

# Paths on the system, for the "nothing left behind" check (contents of files that always
# change, like /etc/passwd or dpkg's database, are not compared; their paths are).
snapshot() {
	find /etc /usr /var /opt /run -xdev \
		\( -path /var/lib/dpkg -o -path /var/log -o -path /var/cache -o -path /var/tmp \
		-o -path /run/user -o -path /var/lib/apt -o -path /var/backups \) -prune -o -print 2>/dev/null |
		grep -v -e '^/etc/\(passwd\|group\|shadow\|gshadow\|subuid\|subgid\)-\?$' | sort
}

verify_units() {
	step "systemd-analyze verify (stderr must stay empty)"
	local err=$SCRATCH/analyze.err rt=$SCRATCH/xdg-runtime # a user manager's, for --user
	mkdir -m 700 "$rt"
	(cd / && systemd-analyze verify /usr/lib/systemd/system/clove.service \
		/usr/lib/systemd/system/clove.socket) 2>"$err" || { cat "$err"; die "system units"; }
	[ ! -s "$err" ] || { cat "$err"; die "systemd-analyze verify printed the above for the system units"; }
	(cd / && XDG_RUNTIME_DIR=$rt systemd-analyze --user verify \
		/usr/lib/systemd/user/clove.service /usr/lib/systemd/user/clove.socket) 2>"$err" ||
		{ cat "$err"; die "user units"; }
	[ ! -s "$err" ] || { cat "$err"; die "systemd-analyze verify printed the above for the user units"; }
	echo "clove.service, clove.socket (system and user): no findings"
}

verify_deb() {
	[ "$(id -u)" = 0 ] || die "verify installs the .deb: run it as root (or run 'build' only)"
	local deb
	deb=$(deb_file)
	if dpkg-query -W -f='${Status}' clove 2>/dev/null | grep -q ' installed$' && [ ! -e "$MARKER" ]; then
		die "a clove package is already installed here, not by this script; remove it first"
	fi
	step "dpkg-deb --info, --contents"
	dpkg-deb --info "$deb"
	dpkg-deb --contents "$deb"

	step "lintian"
	# The overrides, with their reasons (shown overrides count as failures, hence two runs).
	lintian --fail-on none --display-info --show-overrides "$deb"
	lintian --fail-on error,warning --display-info "$deb" || die "lintian: errors or warnings above"
	echo "lintian: no errors or warnings besides the overrides above (packaging/debian/lintian-overrides)"

	step "dpkg -i"
	local before=$SCRATCH/paths.before after=$SCRATCH/paths.after
	snapshot >"$before"
	touch "$MARKER"
	dpkg -i "$deb"
	check_deb_files
	dpkg --verify clove || die "dpkg --verify: installed files differ from the package's md5sums"
	echo "dpkg --verify: every file matches its md5sum"
	/usr/bin/clove --version | grep -qxF "clove $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ||
		die "clove --version: $(/usr/bin/clove --version)"
	echo "/usr/bin/clove --version: $(/usr/bin/clove --version)"
	if readelf -S /usr/bin/clove | grep -qE '\.symtab|\.debug_'; then die "/usr/bin/clove is not stripped"; fi
	echo "/usr/bin/clove: stripped, $(stat -c %s /usr/bin/clove) bytes"
	getent passwd clove | grep -q ':/var/lib/clove:' || die "user clove: $(getent passwd clove)"
	[ "$(id -u clove)" -lt 1000 ] || die "clove is not a system user (uid $(id -u clove))"
	echo "system user: $(getent passwd clove)"
	dpkg-query -W -f='${Conffiles}\n' clove | grep -q '^ /etc/clove/clove.toml ' ||
		die "/etc/clove/clove.toml is not a conffile"
	/usr/bin/clove check-config --config /etc/clove/clove.toml >/dev/null
	echo "/etc/clove/clove.toml: a conffile, and valid"

	step "a changed config survives a reinstall"
	sed -i 's/^#max_connections = 4096$/max_connections = 1000/' /etc/clove/clove.toml
	grep -qx 'max_connections = 1000' /etc/clove/clove.toml || die "could not edit the config"
	dpkg -i "$deb"
	grep -qx 'max_connections = 1000' /etc/clove/clove.toml || die "reinstalling replaced the edited config"
	echo "kept"

	verify_units

	step "the installed daemon, under a harness that plays systemd"
	local log=$SCRATCH/harness.log
	python3 packaging/test/fake-systemd.py --binary /usr/bin/clove --config /etc/clove/clove.toml \
		--user clove | tee "$log"
	IDLE_RSS_KIB=$(sed -n 's/^RESULTS .*"idle_rss_kib": \([0-9]*\).*/\1/p' "$log")

	step "dpkg -r: the conffile, the masks and the service's state stay"
	# What the service would have made: its state directory, with a file in it.
	install -d -o clove -g clove -m 0700 /var/lib/clove
	install -o clove -g clove -m 0600 /dev/null /var/lib/clove/store.db
	dpkg -r clove
	dpkg-query -W -f='${Status}\n' clove | grep -qx 'deinstall ok config-files' ||
		die "after dpkg -r: $(dpkg-query -W -f='${Status}' clove)"
	[ ! -e /usr/bin/clove ] || die "/usr/bin/clove is still there"
	snapshot >"$after"
	echo "left after dpkg -r (policy: conffiles, and state until purge):"
	comm -13 "$before" "$after" | sed 's/^/  /'
	comm -13 "$before" "$after" | grep -vxE '/etc/clove|/etc/clove/clove.toml|/var/lib/clove|/var/lib/clove/store.db|/etc/systemd/system/clove\.(service|socket)|/var/lib/systemd/deb-systemd-helper-masked(/clove\.(service|socket))?|/var/lib/systemd/deb-systemd-helper-enabled(/.*clove.*)?|/var/lib/systemd' &&
		die "dpkg -r left more than that"

	step "dpkg -P: nothing left but the clove user"
	dpkg -P clove
	rm -f "$MARKER"
	if dpkg-query -W -f='${Status}\n' clove 2>/dev/null | grep -qv 'not-installed'; then
		die "after dpkg -P: $(dpkg-query -W -f='${Status}' clove)"
	fi
	snapshot >"$after"
	if ! diff "$before" "$after"; then
		die "dpkg -P left the paths above (> new, < gone)"
	fi
	echo "no path added or removed in /etc /usr /var /opt /run; kept by policy:"
	echo "  user $(getent passwd clove) and group $(getent group clove) (Debian keeps system users)"
}

verify_rpm() {
	local rpmf root=$SCRATCH/rpm-root
	rpmf=$(rpm_file)
	step "rpm -qpi, -qpl, -K"
	rpm -qpi "$rpmf"
	rpm -qpl "$rpmf"
	local digests
	digests=$(rpm -K --nosignature "$rpmf")
	echo "$digests"
	grep -q 'digests OK' <<<"$digests" || die "rpm -K"
	echo "requires:"
	rpm -qpR "$rpmf" | sed 's/^/  /'
	rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpmf" >"$OUT/rpm-files.txt"
	local want
	while read -r want; do
		grep -qxE -e "$want" "$OUT/rpm-files.txt" || { cat "$OUT/rpm-files.txt"; die "rpm lacks: $want"; }
	done <<'EOF'
-rwxr-xr-x root:root  /usr/bin/clove
-rw-r--r-- root:root cn /etc/clove/clove.toml
-rw-r--r-- root:root  /usr/lib/systemd/system/clove.service
-rw-r--r-- root:root  /usr/lib/systemd/system/clove.socket
-rw-r--r-- root:root  /usr/lib/systemd/user/clove.service
-rw-r--r-- root:root  /usr/lib/systemd/user/clove.socket
-rw-r--r-- root:root  /usr/lib/sysusers.d/clove.conf
-rw-r--r-- root:root d /usr/share/man/man1/clove.1.gz
-rw-r--r-- root:root  /usr/share/bash-completion/completions/clove
-rw-r--r-- root:root  /usr/share/zsh/site-functions/_clove
-rw-r--r-- root:root  /usr/share/fish/vendor_completions.d/clove.fish
-rw-r--r-- root:root d /usr/share/doc/clove/README.md
EOF
	echo "files, modes, owners and flags as expected (cn: config(noreplace), d: doc)"
	local tag script
	for tag in PREIN POSTIN PREUN POSTUN; do
		script=$(rpm -qp --qf "%{$tag}" "$rpmf")
		[ "$script" != "(none)" ] || die "the rpm has no $tag scriptlet"
		sh -n <<<"$script" || die "the $tag scriptlet is not valid sh"
	done
	echo "scriptlets: valid sh"

	step "rpm --root: install into a scratch root"
	mkdir "$root"
	# The database at the usual place inside the root (Debian's rpm defaults to ~/.rpmdb).
	rpm --root "$root" --dbpath /var/lib/rpm --initdb
	# Scriptlets run inside the root, which has no shell: they are checked above instead.
	rpm --root "$root" --dbpath /var/lib/rpm -i --nodeps --noscripts "$rpmf"
	rpm --root "$root" --dbpath /var/lib/rpm -q clove
	rpm --root "$root" --dbpath /var/lib/rpm -V --nodeps clove || die "rpm -V found differences"
	[ -x "$root/usr/bin/clove" ] || die "no /usr/bin/clove in the scratch root"
	"$root/usr/bin/clove" --version
	[ "$(stat -c '%a %U' "$root/etc/clove/clove.toml")" = "644 root" ] || die "config mode"
	rpm --root "$root" --dbpath /var/lib/rpm -e --noscripts clove
	[ ! -e "$root/usr/bin/clove" ] || die "rpm -e left /usr/bin/clove"
	local left
	left=$(find "$root" -type f ! -path "$root/var/lib/rpm/*")
	[ -z "$left" ] || die "rpm -e left: $left"
	echo "installed, verified (rpm -V), run, erased: nothing left"
}

cleanup() {
	local code=$?
	rm -rf "$SCRATCH"
	if [ $code -ne 0 ] && [ -e "$MARKER" ] && [ -z "${CLOVE_KEEP_INSTALLED:-}" ]; then
		echo "package.sh: purging the test install after the failure" >&2
		dpkg -P clove >/dev/null 2>&1 || true
		rm -f "$MARKER"
	fi
}
trap cleanup EXIT

mode=${1:-all}
# One command per line: `set -e` does not apply inside a function called from an && list.
case "$mode" in
build | verify | all) ;;
*) die "usage: scripts/package.sh [build|verify]" ;;
esac
install_tools
if [ "$mode" != verify ]; then build; fi
if [ "$mode" != build ]; then
	verify_deb
	verify_rpm
fi
step "done"
if [ "$mode" != build ]; then
	echo "packages: $(for f in $(deb_file) $(rpm_file); do printf '%s %s; ' "$(basename "$f")" "$(human "$(stat -c %s "$f")")"; done)"
	echo "installed daemon's idle RSS: ${IDLE_RSS_KIB:-?} KiB"
fi
