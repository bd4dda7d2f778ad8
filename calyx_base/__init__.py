"""Calyx's foundation: what every layer uses and that knows nothing of gRPC, the config, the store or
kernel objects (errors, running helper programs, waiting, atomic files, failpoints, logging, the
helper-call instruments, cleanups retried until they succeed, the event-loop thread of the HTTP
servers, bounded pools of daemon threads)."""
