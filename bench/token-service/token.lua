-- wrk script: client_credentials token requests with client_secret_basic.
-- AUTH (env) is the base64 of "client_id:client_secret" (form-encoded, RFC 6749 2.3.1).
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=" .. (os.getenv("SCOPE") or "read")
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic " .. os.getenv("AUTH")
