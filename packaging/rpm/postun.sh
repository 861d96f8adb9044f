# clove %postun: after an upgrade a running daemon restarts on the new binary. On erase the
# "clove" user and /var/lib/clove stay (Fedora's practice: rpm never deletes a system user or
# data it did not install).
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -ge 1 ]; then
		systemctl try-restart clove.service >/dev/null 2>&1 || :
	fi
fi
exit 0
