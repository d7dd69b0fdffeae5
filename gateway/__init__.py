"""The gateway: the mini-program's HTTP API (FastAPI on uvicorn), calling the
services over gRPC on behalf of the signed-in member. It imports no service code,
only the runtime and the generated contracts (gen/)."""
