# clove %post: on first install, systemd applies its presets (the service is not enabled
# unless a preset says so; `systemctl enable --now clove.socket` does it). Works with systemd
# not running.
if [ "$1" -eq 1 ]; then
	systemctl --no-reload preset clove.socket clove.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
