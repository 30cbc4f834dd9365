-- wrk script: a different pregenerated token on every request (cache-miss variants).
-- TOKENS_FILE: one token per line; BENCH_PATH: request path.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
  if #line > 0 then tokens[#tokens + 1] = line end
end
local path = os.getenv("BENCH_PATH") or "/api/resource"
local i = 0

request = function()
  i = i % #tokens + 1
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. tokens[i] })
end
