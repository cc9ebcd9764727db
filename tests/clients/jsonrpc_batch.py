"""Send one JSON-RPC 2.0 batch with the jsonrpcclient library and parse the reply with it.

Usage: jsonrpc_batch.py URL

Builds three calls with jsonrpcclient.request (makeDir "/slow", "/a", "/b"), POSTs them as
one array with httpx, and hands the decoded reply to jsonrpcclient.parse, which pairs each
answer with its call by id.

Prints ONE JSON line: {"order": [ids as the reply lists them], "results": {id: result or
{"error": code}}, "transfer_encoding": ...}.
"""

import json
import sys

import httpx
from jsonrpcclient import Error, Ok, parse, request


def main() -> None:
    url = sys.argv[1]
    calls = [request("makeDir", params=["467e", path]) for path in ("/slow", "/a", "/b")]
    response = httpx.post(url, json=calls, timeout=30)
    response.raise_for_status()
    reply = response.json()
    results = {}
    for parsed in parse(reply):
        if isinstance(parsed, Ok):
            results[str(parsed.id)] = parsed.result
        elif isinstance(parsed, Error):
            results[str(parsed.id)] = {"error": parsed.code}
    print(
        json.dumps(
            {
                "sent": [call["id"] for call in calls],
                "order": [answer.get("id") for answer in reply],
                "results": results,
                "transfer_encoding": response.headers.get("transfer-encoding"),
            }
        )
    )


if __name__ == "__main__":
    main()
