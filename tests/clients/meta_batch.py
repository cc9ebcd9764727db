"""Send Meta Graph batches through batchgate with Meta's Python SDKs and print what they parsed.

Usage: meta_batch.py business BASE   facebook-business: FacebookAdsApiBatch with callbacks
       meta_batch.py raw BASE        facebook-sdk: a raw batch with name, depends_on and
                                     {result=...} references

BASE is batchgate's origin (http://127.0.0.1:PORT). Prints ONE JSON line.

business: three calls added with FacebookAdsApiBatch.add (GET me, POST me/feed, GET missing)
and one that times out (GET slow); execute() calls each callback with what it parsed and
returns a new batch of the calls answered `null` (to retry). Prints {"success": {key: json},
"failure": {key: {"code", "message"}}, "retry": [relative_url, ...]}.

raw: facebook.GraphAPI(...).request("v21.0/", post_args={"batch": ...}) returns the reply
array as parsed JSON. Prints {"reply": [...]} with each body parsed from its string.
"""

import json
import sys


def business(base: str) -> None:
    from facebook_business.api import FacebookAdsApi, FacebookSession

    FacebookSession.GRAPH = base
    api = FacebookAdsApi.init(access_token="tok", api_version="v21.0", crash_log=False)
    batch = api.new_batch()
    success, failure = {}, {}

    def on(key):
        return (
            lambda response: success.__setitem__(key, response.json()),
            lambda response: failure.__setitem__(
                key,
                {
                    "code": response.error().api_error_code(),
                    "status": response.status(),
                    "message": response.error().api_error_message(),
                },
            ),
        )

    for key, method, path, params in [
        ("me", "GET", "me", {"fields": "id,name"}),
        ("post", "POST", "me/feed", {"message": "hi there", "tags": ["a", "b"]}),
        ("missing", "GET", "missing", None),
        ("slow", "GET", "slow", None),
    ]:
        ok, bad = on(key)
        batch.add(method, path, params=params, success=ok, failure=bad)
    retry = batch.execute()
    retried = [call["relative_url"] for call in retry._batch] if retry else []
    print(json.dumps({"success": success, "failure": failure, "retry": retried}))


def raw(base: str) -> None:
    import facebook

    facebook.FACEBOOK_GRAPH_URL = base + "/"
    graph = facebook.GraphAPI(access_token="tok", version="3.1")
    items = [
        {"method": "GET", "relative_url": "me", "name": "me"},
        {
            "method": "GET",
            "relative_url": "me/friends",
            "name": "friends",
            "depends_on": "me",
            "omit_response_on_success": False,
        },
        {"method": "GET", "relative_url": "people?ids={result=friends:$.data.*.id}"},
        {
            "method": "POST",
            "relative_url": "{result=me:$.id}/notes",
            "body": "message=Hello {result=me:$.name}",
        },
        {"method": "GET", "relative_url": "people/{result=friends:$.paging.next}"},
    ]
    reply = graph.request("v21.0/", post_args={"batch": json.dumps(items)})
    for element in reply:
        if element and isinstance(element.get("body"), str):
            element["body"] = json.loads(element["body"])
    print(json.dumps({"reply": reply}))


if __name__ == "__main__":
    {"business": business, "raw": raw}[sys.argv[1]](sys.argv[2])
