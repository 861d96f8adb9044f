# Prints a numbered tick every 50 ms, forever.
n=0
while :; do
  n=$((n+1))
  echo "tick $n"
  sleep 0.05
done
