"""Forks up to 40 sleeping children, counts the forks that succeeded, writes the count."""
import os
import sys
import time

started = 0
for _ in range(40):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    started += 1
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(started))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
time.sleep(30)
