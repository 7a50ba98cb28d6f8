"""An emulator of the contest's payment processor (SPEC.md §3): `python -m rinha.emulator`.

One process per processor, in memory, on the project's own HTTP core (`rinha.http`). `app`
holds the routes and the switches the test flips (delay, failure, token), `table` the
payments, `admission` the concurrency limit of `POST /payments` and the shared fixed window of
`GET /payments/service-health`, `settings` what is read once from the command line.

Known differences from the official processor (zanfranceschi/rinha-de-backend-2025-payment-
processor, ASP.NET over PostgreSQL):
- health answers 200 even when failing (later official versions answer 503, same body);
  a 429 carries Retry-After until the next window, not the window's length; a queued health
  caller that hangs up keeps its place in the queue;
- the body must carry all three payment fields with JSON types (the official fills missing
  ones with zero values, reads numbers from strings and field names in any case);
- amounts are rendered with two decimals (the official echoes the scale it stored);
- routes of its own, for tests (rinha/emulator/app.py): `GET /admin/health-calls` counts the
  health calls it answered and refused, so tests can check that callers keep to the window;
  `GET /admin/payments-in-flight` counts the payments received and not answered yet;
  `PUT /admin/configurations/rejected-ids` answers named payments 400;
- no `/` page, no OpenAPI; paths are case-sensitive and a trailing `/` is not ignored.
"""
