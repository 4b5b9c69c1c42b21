"""Per-connection protocols: HTTP/1.1 (`http`) and WebSocket (`websocket`).

`http` and `headers` may be installed compiled (mypyc, with the other modules setup.py
lists); `aserve._build` selects which variant runs.
"""
