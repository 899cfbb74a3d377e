"""The broker role: the one place that knows where every task is (``broker.py``)."""
