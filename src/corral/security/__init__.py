"""Keys and credentials for CurveZMQ links between machines: keys.py, zap.py."""
