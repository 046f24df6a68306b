-- wrk script for the reset page's POST: every request spends a token of its own, as a person
-- would, so every request does the whole reset (Argon2 hash, the transaction, the event).
-- Tokens are "bench" .. the account's number padded to 38 digits (43 characters, as minted
-- ones are); bench/page makes enough of them. Thread k of n takes k, k + n, k + 2n, ...
-- BENCH_PAGE_FIRST is the first token this run may spend.
local threads = 0

function setup(thread)
  thread:set("next_token", (tonumber(os.getenv("BENCH_PAGE_FIRST")) or 1) + threads)
  threads = threads + 1
end

local stride = tonumber(os.getenv("BENCH_PAGE_THREADS")) or 1
local fields = "&password=violet+kettle+harbour+ninety&confirm=violet+kettle+harbour+ninety"

function request()
  local token = string.format("bench%038d", next_token)
  next_token = next_token + stride
  return wrk.format("POST", "/reset-password", {
    ["Content-Type"] = "application/x-www-form-urlencoded",
  }, "token=" .. token .. fields)
end
