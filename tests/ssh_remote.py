"""The program that SSH launcher tests run on the "node" in place of a worker: a lifeline's reader.

``python ssh_remote.py RECORD [EXIT_CODE]`` reads its first line of standard input (the launch
document), writes it to the JSON file RECORD with its environment variables ``CORRAL_TEST_*``,
working directory, pid, parent's pid and network namespace, then reads standard input to its end,
as a launched worker does with ``lifeline``, writes RECORD.eof and exits (with EXIT_CODE, 0 by default).
"""

import json
import os
import sys

record = sys.argv[1]
document = sys.stdin.buffer.readline()
facts = {
    "document": document.decode(errors="replace"),
    "env": {name: value for name, value in os.environ.items() if name.startswith("CORRAL_TEST_")},
    "cwd": os.getcwd(),
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "netns": os.readlink("/proc/self/ns/net"),
}
with open(record + ".part", "w") as f:
    json.dump(facts, f)
os.replace(record + ".part", record)
while sys.stdin.buffer.read(65536):
    pass
with open(record + ".part", "w") as f:
    f.write(str(os.getpid()))
os.replace(record + ".part", record + ".eof")
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
