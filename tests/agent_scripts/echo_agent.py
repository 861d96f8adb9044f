"""Reports its identity (HELLO over two connections, env) and echoes every message back."""
import os
import sys
import time
from clove_client import Clove, HELLO, RECV, SEND, STORE

name = os.environ["CLOVE_AGENT_NAME"]
a, b = Clove(), Clove()
ids = {
    "hello": a.call(HELLO)["agent_id"],
    "second_connection": b.call(HELLO)["agent_id"],
    "env": int(os.environ["CLOVE_AGENT_ID"]),
    "argv_socket": sys.argv[1],
}
b.sock.close()
a.call(STORE, {"key": "ids:" + name, "value": ids})
while True:
    r = a.call(RECV, {"max": 10})
    for m in r.get("messages", []):
        a.call(SEND, {"to": m["from"], "message": {"echo": m["message"]}})
    time.sleep(0.02)
