-- wrk script: RFC 7662 introspection cycling through distinct tokens (one per line in the
-- TOKENS_FILE env file), so a per-token verification cache cannot answer every request.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
    if #line > 0 then tokens[#tokens + 1] = line end
end
local i = 0
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
request = function()
    i = i % #tokens + 1
    return wrk.format("POST", nil, headers, "token=" .. tokens[i])
end
