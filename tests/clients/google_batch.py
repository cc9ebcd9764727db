"""Drive google-api-python-client's BatchHttpRequest against batchgate.

Usage: google_batch.py BASE_URL          (e.g. http://127.0.0.1:8080)

Builds the Drive v3 client offline from the discovery document bundled with the
library (static_discovery=True, developerKey="x", no credentials, a plain
httplib2.Http with a 10 s timeout), points it at BASE_URL (client_options
api_endpoint = BASE_URL/drive/v3/) and sends ONE multipart/mixed batch to

    POST BASE_URL/batch/drive/v3          (batch_uri passed explicitly)

with three parts, in this order (request_id: inner request line):

    a        GET /drive/v3/files/a?key=x&alt=json        (upstream: 200 JSON)
    b        GET /drive/v3/files/b?key=x&alt=json        (upstream: 200 JSON)
    missing  GET /drive/v3/files/missing?key=x&alt=json  (upstream: 404)

It checks that the library can parse batchgate's multipart reply: every part's
Content-ID maps back to its request_id and each callback fires once. It prints
ONE JSON line to stdout with what the client parsed:

    {"batch_uri": "...", "responses": {
       "a": {"response": {...parsed JSON body...}},
       "missing": {"error": {"status": 404, "content": "...body text..."}}, ...}}

Exit 0 when every callback fired (an item's HttpError is data, not a failure);
exit 1, with the reason on stderr, on anything else (transport error, outer
non-2xx, BatchError, a part missing or unparseable, a callback not called).
The exact bytes the library sends are in google_batch_request.txt.
"""
import json
import sys
import traceback

import httplib2
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

TIMEOUT_S = 10
FILE_IDS = ["a", "b", "missing"]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    base = sys.argv[1].rstrip("/")
    http = httplib2.Http(timeout=TIMEOUT_S)
    drive = build(
        "drive",
        "v3",
        http=http,
        developerKey="x",
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": f"{base}/drive/v3/"},
    )
    batch_uri = f"{base}/batch/drive/v3"
    results = {}

    def callback(request_id, response, exception):
        if exception is None:
            results[request_id] = {"response": response}
        elif isinstance(exception, HttpError):
            content = exception.content
            if isinstance(content, bytes):
                content = content.decode("utf-8", "replace")
            results[request_id] = {
                "error": {"status": exception.resp.status, "content": content}
            }
        else:  # the library only passes HttpError; anything else is a bug
            raise exception

    batch = BatchHttpRequest(callback=callback, batch_uri=batch_uri)
    for file_id in FILE_IDS:
        batch.add(drive.files().get(fileId=file_id), request_id=file_id)
    batch.execute(http=http)

    missing = [i for i in FILE_IDS if i not in results]
    if missing:
        raise RuntimeError(f"callbacks not called for {missing}")
    print(json.dumps({"batch_uri": batch_uri, "responses": results}, sort_keys=True))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - report any failure and exit non-zero
        traceback.print_exc(file=sys.stderr)
        why = " ".join(str(e).split())[:500]  # one line, even for an HttpError with HTML
        print(f"google_batch.py: FAILED: {type(e).__name__}: {why}", file=sys.stderr)
        sys.exit(1)
