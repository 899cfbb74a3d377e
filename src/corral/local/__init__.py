"""What an executor runs on its own machine: its pool of worker processes (``pool.py``) and the
shared-memory files it exchanges large buffers through with them (``shm.py``)."""
