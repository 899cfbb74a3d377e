"""An SSH launcher that a test runs inside a network namespace, and drives through its pipes.

``python ssh_launcher_client.py SETTINGS`` makes ``corral.launchers.SSH(**json.loads(SETTINGS))``,
says ``{"ready": PID}``, then answers one JSON line on stdout for each JSON line on stdin:

- ``{"op": "launch", "name": N, "command": [...], "stdin": TEXT, "env": {...}, "cwd": C}``:
  ``{"id": JOB_ID, "seconds": S}`` or ``{"error": TYPE, "message": M}``;
- ``{"op": "status", "ids": [...]}``: ``{"status": {ID: [STATE, DETAIL]}}``;
- ``{"op": "terminate", "ids": [...]}``: ``{"ok": true, "seconds": S}``;
- ``{"op": "quit"}``: ``close()`` the launcher, answer ``{"ok": true}`` and exit.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    from corral.launchers import SSH, WorkerLaunch

    launcher = SSH(**json.loads(sys.argv[1]))
    print(json.dumps({"ready": __import__("os").getpid()}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            started = time.monotonic()
            if op == "launch":
                launch = WorkerLaunch(name=command["name"], command=tuple(command["command"]),
                                      stdin=command["stdin"].encode(), env=command.get("env", {}),
                                      cwd=command.get("cwd"))
                try:
                    reply = {"id": launcher.launch(launch)}
                except Exception as exc:  # noqa: BLE001 - the test looks at what it was
                    reply = {"error": type(exc).__name__, "message": str(exc)}
            elif op == "status":
                reply = {"status": {key: [st.state.value, st.detail]
                                    for key, st in launcher.status(command["ids"]).items()}}
            elif op == "terminate":
                launcher.terminate(command["ids"])
                reply = {"ok": True}
            elif op == "quit":
                break
            else:
                reply = {"error": "ValueError", "message": f"unknown op {op!r}"}
            reply["seconds"] = round(time.monotonic() - started, 3)
            print(json.dumps(reply), flush=True)
    finally:
        launcher.close()
    print(json.dumps({"ok": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
