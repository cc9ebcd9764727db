// Read a streamed batch reply the way a browser or Node client does: fetch() and the
// response body's stream reader, splitting JSON Lines as bytes arrive.
//
// Usage: node stream_batch.mjs URL BODY_JSON
// Prints ONE JSON line: {"content_type": ..., "records": [{"at": SECONDS, "data": RECORD}]}.

const [url, body] = process.argv.slice(2);
const started = performance.now();
const response = await fetch(url, {
  method: "POST",
  headers: { "Content-Type": "application/json", Accept: "application/x-ndjson" },
  body,
});
if (!response.ok) throw new Error(`status ${response.status}`);
const reader = response.body.getReader();
const decoder = new TextDecoder();
const records = [];
let pending = "";
for (;;) {
  const { value, done } = await reader.read();
  if (done) break;
  pending += decoder.decode(value, { stream: true });
  let newline;
  while ((newline = pending.indexOf("\n")) >= 0) {
    const line = pending.slice(0, newline);
    pending = pending.slice(newline + 1);
    if (line) records.push({ at: (performance.now() - started) / 1000, data: JSON.parse(line) });
  }
}
console.log(JSON.stringify({ content_type: response.headers.get("content-type"), records }));
