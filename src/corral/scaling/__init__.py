"""Autoscaling: launched workers follow the work (``policy.py``: how many; ``fleet.py``: the launches)."""
