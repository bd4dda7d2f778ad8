"""The gRPC adapters: one class per RPC family (see service.py)."""
