"""Per-connection protocols: HTTP/1.1 (`http`) and WebSocket (`websocket`).

`http` and `headers` may be installed compiled (mypyc, see setup.py); `aserve._build` selects
which variant runs.
"""
