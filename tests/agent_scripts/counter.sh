# Writes an increasing counter to the file given as the second argument, every 20 ms.
n=0
while :; do
  n=$((n+1))
  echo "$n" > "$2.tmp" && mv "$2.tmp" "$2"
  sleep 0.02
done
