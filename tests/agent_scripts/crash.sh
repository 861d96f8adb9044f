# Exits with the code given as the second argument (default 1), after an optional delay.
[ -n "$3" ] && sleep "$3"
exit "${2:-1}"
