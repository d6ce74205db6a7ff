"""Generated gRPC code for the execgate.v1 API (see the .proto files beside this one)."""
