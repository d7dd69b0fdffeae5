"""`make bench`: the member service's throughput as ratios to a bare grpc.aio echo
server, measured in the same run by the same client.

The machine running it is shared and noisy, so no figure here is an absolute claim:
each member RPC's calls/s is divided by the mean of the echo runs measured right
before and after it (echo, GetMember, echo, RecordOrder, echo). The echo server is
grpc.aio with one generic unary method, no interceptors and no auth, answering a
pre-built Member of realistic size; the client sends it the same auth metadata.

Layout: one load-generator process (this one: grpc.aio, one channel per target, N
coroutines in a closed loop) and one process per server (bench.server), so on a
two-core machine the client and the server under test each get a core. The member
service runs as in the dev stack: SQLite under a temporary directory, an embedded
Valkey for its outbox relay, real tokens, one JSON log line per RPC (to a file the
bench scans for errors afterwards), 5,000 members seeded through RegisterMember.

The machine is also measured: "other load" is the CPU that processes other than
the client, the server under test and its Valkey used during a run. A run taken
while other work held more than a quarter of a CPU is measured once more (three
retries per bench at most) and flagged in the table; the CPU-cost ratio (server
CPU per echo call over server CPU per member call) is printed beside each ratio as
the steadier reading of the same question on a busy machine.

Files: runner.py (orchestration), server.py (the server processes), load.py (the
closed-loop client), workload.py (requests), procstat.py (CPU accounting from
/proc), report.py (table and bench/results/latest.json), profiling.py
(`--profile`). `--server-env` and `--server-patch` measure what-if changes to the
member server without editing services/ (written to whatif.json, not latest.json).

The gateway's bench (`python -m bench.gateway`: GET /v1/me against a bare Starlette
endpoint, and the added latency over GetMember) is gateway.py (orchestration),
http_servers.py (the gateway, Starlette and no-framework servers), http_load.py (the
HTTP load generator process) and gateway_report.py (figures, gateway-latest.json).
"""
