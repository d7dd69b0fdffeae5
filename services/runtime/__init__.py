"""What every Pond service runs on: config, logging, the gRPC server and its
interceptors, errors, auth, storage and Redis set-up, the event bus and outbox,
idempotency and the clock. One copy, used by every service; imports no service."""
