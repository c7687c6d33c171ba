"""Runs grpcio-tools' bundled protoc from the locked environment."""

import sys

from grpc_tools import protoc

if __name__ == "__main__":
    sys.exit(protoc.main(["protoc"] + sys.argv[1:]))
