"""Touches far more memory than its limit."""
import time
chunks = []
for _ in range(64):
    chunks.append(b"x" * (16 << 20))
time.sleep(30)
