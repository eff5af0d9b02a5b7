"""The gRPC wire definition (``fedml.proto``) and the modules generated from it; import only with grpc."""
