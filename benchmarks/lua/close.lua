-- A new connection for every request: the client asks the server to close after each answer.
wrk.headers["Connection"] = "close"
