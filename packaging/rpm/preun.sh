# clove %preun: on erase (not upgrade), the units are disabled and stopped.
if [ "$1" -eq 0 ]; then
	systemctl --no-reload disable --now clove.service clove.socket >/dev/null 2>&1 || :
fi
exit 0
