"""The wire: corral's messages (``protocol``), the links they travel on (ZeroMQ ``sockets``,
a socket pair ``stream``, a task process's ``lane``; large buffers between an executor and its
own workers as shared-memory files, ``shm``), and waiting for them (``poller``).
The format is specified in docs/protocol.md; ``protocol`` is its one implementation."""
