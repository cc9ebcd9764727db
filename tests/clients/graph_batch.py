"""Drive msgraph-core's JSON batch support against batchgate.

Usage: graph_batch.py BASE_URL [--relative]
       (BASE_URL e.g. http://127.0.0.1:8080/v1.0; a bare origin gets /v1.0 added)

Uses msgraph-core's BatchRequestBuilder / BatchRequestContent / BatchRequestItem /
BatchResponseContent over its default httpx client and middleware (10 s timeout),
with kiota's AnonymousAuthenticationProvider (no credentials) and the kiota JSON
(de)serializers, and sends ONE batch to

    POST BASE_URL/$batch        (e.g. POST /v1.0/$batch)

The items are hand-made kiota RequestInformation objects with template
"{+baseurl}/..." and baseurl = BASE_URL, so the SDK puts ABSOLUTE urls in the
batch ("http://127.0.0.1:PORT/v1.0/me"). With --relative the baseurl is left
empty, which gives relative urls ("/me"), as msgraph-sdk's generated request
builders do (GraphServiceClient(...).me.to_get_request_information()).

    id  url (after BASE_URL)  depends_on  upstream answers      batchgate answers
    1   /me                   -           200 JSON              200
    2   /me/drive             ["1"]       200 JSON              200
    3   /missing              -           404 JSON              404
    4   /me/manager           ["3"]       (never sent)          424 FailedDependency
    5   /me/notes.txt         -           200 text/plain hello  200, body base64 (reply_body = "graph")

It prints ONE JSON line with what the SDK parsed, per id, in request order:

    {"sent_urls": {...}, "responses": {"1": {"status": 200, "headers": {...}, "body": null}, ...}}

"body" is what BatchResponseItem.body holds, decoded as UTF-8 (or
{"base64": ...} when it is not UTF-8): the SDK base64-decodes a string body
(Graph's encoding of non-JSON bodies) and, with kiota-serialization-json
1.16.0, yields None for a JSON-object body (kiota-python issue 737), so JSON
items show "body": null. Exit 0 when the SDK parsed a response for every id;
exit 1 with the reason on stderr otherwise (transport error, outer non-2xx
APIError, unparseable reply, an id missing, the 10 s deadline).
The exact JSON the SDK sends is in graph_batch_request.json.
"""
import asyncio
import base64
import json
import sys
import traceback
from urllib.parse import urlsplit

import httpx
from kiota_abstractions.api_client_builder import (
    register_default_deserializer,
    register_default_serializer,
)
from kiota_abstractions.authentication import AnonymousAuthenticationProvider
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from kiota_serialization_json.json_parse_node_factory import JsonParseNodeFactory
from kiota_serialization_json.json_serialization_writer_factory import (
    JsonSerializationWriterFactory,
)
from msgraph_core import BaseGraphRequestAdapter, GraphClientFactory
from msgraph_core.requests.batch_request_builder import BatchRequestBuilder
from msgraph_core.requests.batch_request_content import BatchRequestContent
from msgraph_core.requests.batch_request_item import BatchRequestItem

TIMEOUT_S = 10
# (id, path after the base url, ids it depends on)
ITEMS = [
    ("1", "/me", []),
    ("2", "/me/drive", ["1"]),
    ("3", "/missing", []),
    ("4", "/me/manager", ["3"]),
    ("5", "/me/notes.txt", []),
]


def body_for_json(body):
    if body is None:
        return None
    raw = body.getvalue() if hasattr(body, "getvalue") else bytes(body)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}


async def run(base: str, relative: bool) -> dict:
    register_default_serializer(JsonSerializationWriterFactory)
    register_default_deserializer(JsonParseNodeFactory)
    http_client = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(timeout=TIMEOUT_S)
    )
    adapter = BaseGraphRequestAdapter(AnonymousAuthenticationProvider(), http_client=http_client)
    adapter.base_url = base

    content = BatchRequestContent()
    for item_id, path, depends_on in ITEMS:
        info = RequestInformation(
            Method.GET, "{+baseurl}" + path, {"baseurl": "" if relative else base}
        )
        info.headers.try_add("Accept", "application/json")
        content.add_request(item_id, BatchRequestItem(info, id=item_id, depends_on=depends_on))
    sent_urls = {i: r.url for i, r in content.requests.items()}

    reply = await BatchRequestBuilder(adapter).post(content)
    responses = reply.responses or {}
    missing = [i for i, _, _ in ITEMS if i not in responses]
    if missing:
        raise RuntimeError(f"no response parsed for ids {missing}; got {sorted(responses)}")
    return {
        "sent_urls": sent_urls,
        "responses": {
            i: {
                "status": responses[i].status,
                "headers": responses[i].headers,
                "body": body_for_json(responses[i].body),
            }
            for i, _, _ in ITEMS
        },
    }


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--relative"]
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    base = args[0].rstrip("/")
    if not urlsplit(base).path:
        base += "/v1.0"
    out = asyncio.run(asyncio.wait_for(run(base, "--relative" in sys.argv), TIMEOUT_S))
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - report any failure and exit non-zero
        traceback.print_exc(file=sys.stderr)
        why = " ".join(str(e).split())[:500]
        why = f"no reply within {TIMEOUT_S} s" if isinstance(e, TimeoutError) else why
        print(f"graph_batch.py: FAILED: {type(e).__name__}: {why}", file=sys.stderr)
        sys.exit(1)
