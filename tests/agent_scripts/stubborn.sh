# Ignores SIGTERM; only SIGKILL ends it.
trap '' TERM
echo "stubborn agent up"
while :; do sleep 0.05; done
