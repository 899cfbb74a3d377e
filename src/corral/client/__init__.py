"""The client role: ``Executor`` (``executor.py``), its futures, and the I/O loop that owns its link to a broker."""
