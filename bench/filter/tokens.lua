-- wrk script: a different pregenerated token on every request (cache-miss variants).
-- TOKENS_FILE: one token per line; BENCH_PATH: request path; BENCH_HOST: Host header.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
  if #line > 0 then tokens[#tokens + 1] = line end
end
local path = os.getenv("BENCH_PATH") or "/api/resource"
local host = os.getenv("BENCH_HOST")
local i = 0

request = function()
  i = i % #tokens + 1
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. tokens[i], ["Host"] = host })
end
