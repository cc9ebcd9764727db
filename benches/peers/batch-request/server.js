// The npm `batch-request` Express middleware as a reference peer for benches/load.rs
// (issue #6). One node process, no cluster.
//
//   node server.js PORT [ALLOWED_HOST:PORT ...]
//
// PORT may also come from $PORT, allowed hosts from $BATCH_ALLOWED_HOSTS (comma-separated).
// A batch is an object of named requests, each forwarded with `request`:
//   {"a": {"method": "POST", "uri": "http://127.0.0.1:8080/v2/file/get",
//          "headers": {"Content-Type": "application/json"}, "body": "{...}"}, ...}
// and answered as {"a": {"statusCode": 200, "body": ..., "headers": {...}}, ...}.
'use strict';

const http = require('http');
const express = require('express');
const batchRequest = require('batch-request');

const port = Number(process.argv[2] || process.env.PORT || 3000);
const allowed = process.argv.slice(3).concat(
  (process.env.BATCH_ALLOWED_HOSTS || '').split(',').filter(Boolean)
);

// batch-request has no concurrency option: it starts every request of a batch at once, through
// `request`'s default agent (http.globalAgent). Make that agent's keep-alive pool explicit and
// as large as batchgate's `pool_size = 1024` in the benchmark, so upstream connections are
// reused instead of opened per item.
http.globalAgent = new http.Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: 1024 });

const batch = batchRequest({
  max: 100, // requests per batch (validate); the default is 20
  allowedHosts: allowed.length > 0 ? allowed : null, // host:port as url.parse reports it
  defaultHeaders: {},
  forwardHeaders: [],
});

// batch-request 0.1.4 never answers a batch in which one request fails without an HTTP response
// (connection refused, reset): its catch handler reads `err.response.body` of an undefined
// `response`, the rejection escapes and the batch promise never settles. Answer 504 instead of
// leaving the client waiting forever.
const BATCH_TIMEOUT_MS = Number(process.env.BATCH_TIMEOUT_MS || 30000);
function watchdog(req, res, next) {
  const timer = setTimeout(() => {
    if (!res.headersSent) {
      res.status(504).json({ error: 'batch did not complete' });
    }
  }, BATCH_TIMEOUT_MS);
  res.on('close', () => clearTimeout(timer));
  next();
}

const app = express();
app.post('/batch', express.json({ limit: '10mb' }), watchdog, batch.validate, batch);
// batch.validate sends its 400 and then calls next(err); without this handler Express's final
// handler would find the headers already sent and destroy the connection.
app.use((err, req, res, next) => {
  if (res.headersSent) {
    return;
  }
  res.status(err.status || err.statusCode || 500).json({ error: String(err.message || err) });
});

const server = app.listen(port, '127.0.0.1', () => {
  console.error(
    `batch-request reference peer on 127.0.0.1:${port}, allowed hosts: ${allowed.join(' ') || 'any'}`
  );
});
server.keepAliveTimeout = 60000;
process.on('SIGTERM', () => process.exit(0));
