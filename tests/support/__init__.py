"""What the tests share, over real sockets and real processes: starting processes
(`processes`), talking to them (`clients`: our service, the emulated processors; `wire`: raw
bytes), the service's clusters of replicas (`clusters`), sending payments (`senders`) and
checking our summary against the processors' own (`audit`). The fixtures built on these live
in `tests/conftest.py` and `tests/service_fixtures.py`."""
