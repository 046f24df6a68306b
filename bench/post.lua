-- wrk script: the forgot-password request every front-door variant receives.
wrk.method = "POST"
wrk.body = '{"id":"bench.user@example.com"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "bench-key-0123456789abcdef")
