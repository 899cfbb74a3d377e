"""What an executor runs on its own machine: its pool of worker processes (``pool.py``)."""
