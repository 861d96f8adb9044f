"""A long-lived agent: counts its boots in a private (agent-scoped) key, registers the name
given as argv[2] on its first boot only, reports who it is in a global key, echoes messages,
and reconnects (like a real agent) when the daemon goes away."""
import os
import sys
import time
from clove_client import Clove, HELLO, RECV, REGISTER, SEND, STORE

FETCH = 0x31
name = os.environ["CLOVE_AGENT_NAME"]
alias = sys.argv[2] if len(sys.argv) > 2 else None


def run():
    c = Clove()
    me = c.call(HELLO)["agent_id"]
    got = c.call(FETCH, {"key": "boots"})
    boots = got["value"] + 1 if got.get("exists") and got.get("scope") == "agent" else 1
    c.call(STORE, {"key": "boots", "value": boots, "scope": "agent"})
    if alias and boots == 1:
        c.call(REGISTER, {"name": alias})
    report = {"id": me, "env_id": int(os.environ["CLOVE_AGENT_ID"]), "boots": boots}
    c.call(STORE, {"key": "report:" + name, "value": report})
    while True:
        r = c.call(RECV, {"max": 10})
        for m in r.get("messages", []):
            c.call(SEND, {"to": m["from"], "message": {"echo": m["message"], "from": name}})
        time.sleep(0.02)


while True:
    try:
        run()
    except (OSError, EOFError, ValueError, KeyError):
        time.sleep(0.05)
