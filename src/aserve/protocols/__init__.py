"""Per-connection protocols: HTTP/1.1 (`http`) and WebSocket (`websocket`).

`http` may be installed compiled (mypyc, see setup.py); `aserve._build` says which runs.
"""
