"""Keys and credentials for CurveZMQ links between machines (docs/protocol.md)."""
