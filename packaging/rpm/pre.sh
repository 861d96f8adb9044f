# clove %pre: the "clove" system user, before files owned by it are installed. The entry is
# the one /usr/lib/sysusers.d/clove.conf ships (not installed yet at this point, hence --replace
# and standard input, as %sysusers_create_compat does); useradd where systemd-sysusers is
# missing.
if ! getent passwd clove >/dev/null; then
	if command -v systemd-sysusers >/dev/null 2>&1; then
		echo 'u clove - "clove daemon" /var/lib/clove' |
			systemd-sysusers --replace=/usr/lib/sysusers.d/clove.conf - || :
	fi
	if ! getent passwd clove >/dev/null; then
		getent group clove >/dev/null || groupadd -r clove
		useradd -r -g clove -d /var/lib/clove -M -s /sbin/nologin -c "clove daemon" clove
	fi
fi
exit 0
