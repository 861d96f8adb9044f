"""Tries to connect to a TCP port on the host's loopback; writes the outcome to a file."""
import os
import socket
import sys

port, out = int(sys.argv[2]), sys.argv[3]
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.sendall(b"hello")
    result = "connected"
except OSError as e:
    result = "failed: %s" % e
# Write then rename: the test must never read a half-written result.
with open(out + ".tmp", "w") as f:
    f.write(result)
os.rename(out + ".tmp", out)
