"""Per-connection protocols: HTTP/1.1 (`http`) and WebSocket (`websocket`)."""
