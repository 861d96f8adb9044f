# Writes the given number of 100-byte lines to stdout, then sleeps.
i=0
while [ $i -lt "$2" ]; do
  echo "line $i ........................................................................................."
  i=$((i+1))
done
echo "chatty done"
exec sleep 3600
