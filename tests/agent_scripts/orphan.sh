# Leaves an orphan behind: a subshell starts a short sleeper, records its pid, and exits.
( sleep 1 & echo $! > "$2.tmp" && mv "$2.tmp" "$2" )
exec sleep 3600
