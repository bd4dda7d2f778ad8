"""Generated CRI v1 stubs (see hatch_build.py); import ``api_pb2`` and ``api_pb2_grpc`` from here."""

from cri.api import api_pb2, api_pb2_grpc

__all__ = ["api_pb2", "api_pb2_grpc"]
