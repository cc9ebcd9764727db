"""Read a streamed batch reply the way Python clients do.

Usage: stream_batch.py URL ndjson|sse BODY_JSON

ndjson: httpx's client.stream(...) and Response.iter_lines() (Accept: application/x-ndjson).
sse:    httpx-sse's connect_sse(...) and EventSource.iter_sse() (Accept: text/event-stream),
        the library MCP's Python SDK reads Streamable HTTP with.

Prints ONE JSON line: {"content_type": ..., "records": [{"at": SECONDS, "event": NAME,
"data": RECORD}, ...]}, each record parsed by json.loads, "at" from the request's start.
"""

import json
import sys
import time

import httpx
from httpx_sse import connect_sse


def main() -> None:
    url, mode, body = sys.argv[1], sys.argv[2], sys.argv[3]
    started = time.monotonic()
    records = []
    headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=30) as client:
        if mode == "ndjson":
            headers["Accept"] = "application/x-ndjson"
            with client.stream("POST", url, content=body, headers=headers) as response:
                response.raise_for_status()
                content_type = response.headers.get("content-type")
                for line in response.iter_lines():
                    if line:
                        records.append(
                            {"at": time.monotonic() - started, "event": None, "data": json.loads(line)}
                        )
        else:
            with connect_sse(client, "POST", url, content=body, headers=headers) as source:
                source.response.raise_for_status()
                content_type = source.response.headers.get("content-type")
                for event in source.iter_sse():
                    records.append(
                        {"at": time.monotonic() - started, "event": event.event, "data": json.loads(event.data)}
                    )
    print(json.dumps({"content_type": content_type, "records": records}))


if __name__ == "__main__":
    main()
