"""The ceiling of the API throughput benchmark: a bare FastAPI endpoint returning a small JSON body,
served by the same uvicorn build and settings as `dreamforge serve`.

    python bench/ceiling_app.py PORT
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/ping")
async def ping() -> dict[str, object]:
    return {
        "id": "6a1f0c9e-5b7d-4d5e-9a61-0f2b9d8c7e11",
        "status": "running",
        "summary": {"count": 1, "completed": 0},
    }


if __name__ == "__main__":
    # As `dreamforge serve` runs it: info level, so each request writes its access line too.
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
