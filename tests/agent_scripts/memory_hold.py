"""Holds the given number of MiB of touched memory, then sleeps."""
import sys
import time
held = b"x" * (int(sys.argv[2]) << 20)
time.sleep(60)
