"""FastAPI app with a path and a query parameter (kept apart so other apps skip the import)."""

import gc
import os

from fastapi import FastAPI

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None):
    return {"item_id": item_id, "q": q}


@app.get("/gc")
async def collect():
    """A full collection in this process, answering its pid (benchmarks/startup_memory.py)."""
    gc.collect()
    return {"pid": os.getpid()}
