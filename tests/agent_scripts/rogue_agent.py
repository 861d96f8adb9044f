"""Tries what a standard agent may not do, and stores the answers."""
import os
import sys
from clove_client import Clove, SET_PERMS, SPAWN, KILL, GET_PERMS, STORE

c = Clove()
out = {
    "raise_self": c.call(SET_PERMS, {"level": "unrestricted"}),
    "grant_manage": c.call(SET_PERMS, {"permissions": {"can_manage": True}}),
    "spawn": c.call(SPAWN, {"name": "child", "script": sys.argv[0]}),
    "kill_other": c.call(KILL, {"id": int(sys.argv[2])}),
    "perms": c.call(GET_PERMS),
}
c.call(STORE, {"key": "rogue:" + os.environ["CLOVE_AGENT_NAME"], "value": out})
