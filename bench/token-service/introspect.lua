-- wrk script: RFC 7662 introspection of one access token (TOKEN env) on the admin port.
wrk.method = "POST"
wrk.body = "token=" .. os.getenv("TOKEN")
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
