//! A batch reply streamed record by record, for a client that asks for it by `Accept` on a
//! route that offers it (`stream`): each item's answer is written the moment it settles (the
//! dialect's own element, `Dialect::stream_record`), framed as JSON Lines, server-sent events
//! or JSON text sequences, and the stream ends with one terminal record. Status and headers go
//! out before the first item runs; every whole-batch refusal has happened by then.
//!
//! The executor reports each final outcome (`exec::Settled`); the record is encoded there and
//! queued to the writer, which runs beside the executor in the request's task. What waits in
//! the queue is bounded by the batch's reply budget (`max_reply_bytes`), which while streaming
//! counts only what is not written yet (`exec::Unwritten`); once written, an answer no longer
//! counts against it nor against the admission's memory budget. A write that fails (the client left, or stopped reading until
//! `client_send_timeout`) ends the run: queued items never start, sent ones finish in the
//! background as for any batch whose client left.

use super::{settled_items, BatchSummary, ItemResources, REQUEST_ID};
use crate::config::StreamFormat;
use crate::dialect::{Dialect, Outcome, Plan};
use crate::exec;
use crate::item::ItemClass;
use crate::proxy::{BatchGate, Route};
use crate::upstream::BatchHeaders;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, TRANSFER_ENCODING};
use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

/// How long a stream may carry nothing before a keep-alive (an SSE comment, a heartbeat
/// record): well under the idle timeouts of what sits in front (60 s for nginx's
/// `proxy_read_timeout` and AWS ALB).
const KEEPALIVE_AFTER: Duration = Duration::from_secs(15);

/// nginx buffers a proxied response unless told not to.
const ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// A batch about to be streamed: what `serve_batch` has decided for it.
pub(super) struct Streamed<'a> {
    pub format: StreamFormat,
    /// `Progressive`: the dialect's opening and closing bytes (`Dialect::progressive_frame`).
    pub bounds: Option<(&'static [u8], &'static [u8])>,
    pub headers: BatchHeaders,
    pub observer: Arc<ItemResources>,
    /// Items the dialect refused (never sent).
    pub refused: usize,
    pub request_id: &'a str,
    /// The batch's span (`batch_span`), the items' parent.
    pub span: tracing::Span,
    /// Headers the reply carries besides its own (the rate limit's).
    pub extra: Vec<(HeaderName, http::HeaderValue)>,
}

/// The streaming format a request asks for, if the route offers one: a format whose media
/// type `Accept` lists with a weight above zero and not below `application/json`'s (a client
/// that prefers the plain reply gets it). Among several, the highest weight, then the first.
/// Otherwise `Progressive` when the route offers it: the plain reply, written as it grows.
pub(super) fn negotiate(offered: &[StreamFormat], req: &RequestHeader) -> Option<StreamFormat> {
    if offered.is_empty() {
        return None;
    }
    let accept = req.headers.get_all(http::header::ACCEPT);
    let ranges = accept
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(media_range);
    let mut best: Option<(StreamFormat, f32)> = None;
    let mut json = 0.0f32;
    for (media, q) in ranges {
        if media.eq_ignore_ascii_case("application/json") {
            json = json.max(q);
        }
        let format = offered.iter().copied().find(|f| {
            f.media_types()
                .iter()
                .any(|t| t.eq_ignore_ascii_case(media))
        });
        if let Some(format) = format {
            if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((format, q));
            }
        }
    }
    best.filter(|(_, q)| *q >= json)
        .map(|(format, _)| format)
        .or_else(|| {
            offered
                .contains(&StreamFormat::Progressive)
                .then_some(StreamFormat::Progressive)
        })
}

/// One `Accept` element: its media type and weight (`q`, 1 when absent or unreadable).
fn media_range(range: &str) -> (&str, f32) {
    let mut parts = range.split(';');
    let media = parts.next().unwrap_or_default().trim();
    let q = parts
        .filter_map(|p| p.trim().strip_prefix("q="))
        .find_map(|q| q.trim().parse::<f32>().ok())
        .unwrap_or(1.0);
    (media, q.clamp(0.0, 1.0))
}

/// One record in `format`. A record is one line: the only line breaks valid JSON can hold
/// outside strings are whitespace (inside strings they are escaped), so they become spaces.
fn frame(format: StreamFormat, json: Vec<u8>, event: Option<&str>) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 16);
    match format {
        // The element as the buffered reply has it, joined by the writer.
        StreamFormat::Progressive => return Bytes::from(json),
        StreamFormat::Ndjson => {}
        StreamFormat::JsonSeq => out.put_u8(0x1e),
        StreamFormat::Sse => {
            if let Some(event) = event {
                out.put_slice(b"event: ");
                out.put_slice(event.as_bytes());
                out.put_u8(b'\n');
            }
            out.put_slice(b"data: ");
        }
    }
    out.extend(
        json.iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    out.put_u8(b'\n');
    if format == StreamFormat::Sse {
        out.put_u8(b'\n');
    }
    out.freeze()
}

/// What an idle stream carries: an SSE comment, or a heartbeat record.
fn keepalive(format: StreamFormat) -> Bytes {
    match format {
        StreamFormat::Sse => Bytes::from_static(b": keep-alive\n\n"),
        // Never sent: JSON has no room for one that leaves the reply's bytes unchanged.
        StreamFormat::Progressive => Bytes::new(),
        StreamFormat::Ndjson | StreamFormat::JsonSeq => {
            frame(format, br#"{"heartbeat":true}"#.to_vec(), None)
        }
    }
}

/// The terminal record: `{"done":true,"items":N,"records":R,"outcomes":{CLASS:COUNT,...}}`,
/// the classes as in `batchgate_items_total`, those with no item left out.
fn terminal(items: usize, records: usize, classes: &[ItemClass]) -> Vec<u8> {
    let mut outcomes = serde_json::Map::new();
    for class in ItemClass::ALL {
        let count = classes.iter().filter(|c| **c == class).count();
        if count > 0 {
            outcomes.insert(class.as_str().to_string(), count.into());
        }
    }
    serde_json::json!({"done": true, "items": items, "records": records, "outcomes": outcomes})
        .to_string()
        .into_bytes()
}

/// What the executor hands the writer.
enum Message {
    /// Item `index`'s record, framed, with what its answer counts against the reply budget
    /// (`cost`) and the admission's memory (`held`) until it is written.
    Record {
        index: usize,
        bytes: Bytes,
        unusable: bool,
        fields_missing: usize,
        charge: Charge,
    },
    /// Item `index` settled without a record (a JSON-RPC notification, an omitted part).
    Skip { index: usize },
    /// The run is over: every record is queued.
    End,
}

/// What a kept answer counts until it is written: against the reply budget (its
/// `reply_cost`) and the admission's memory (its raw size).
#[derive(Clone, Copy, Default)]
struct Charge {
    cost: usize,
    held: usize,
}

impl Charge {
    /// The answer is out (written, or it has no record): it counts no longer.
    fn settle(self, unwritten: &exec::Unwritten, resources: &ItemResources) {
        unwritten.fetch_sub(self.cost, std::sync::atomic::Ordering::Relaxed);
        resources.ticket.release(self.held);
    }
}

/// What the writer wrote.
#[derive(Default)]
struct Written {
    records: usize,
    first_at: Option<Instant>,
    unusable: Vec<usize>,
    fields_missing: usize,
}

impl BatchGate {
    /// Runs the batch and streams its answers as they settle; see the module doc.
    pub(super) async fn serve_streamed<D: Dialect>(
        &self,
        session: &mut Session,
        route: &Route,
        dialect: &D,
        plan: Plan<D::Meta>,
        batch: Streamed<'_>,
        summary: &mut BatchSummary,
    ) -> Result<()> {
        let Streamed {
            format,
            bounds,
            headers,
            observer,
            refused,
            request_id,
            span,
            extra,
        } = batch;
        summary.streamed = Some(format);
        let h2 = session.downstream_session.is_http2();
        let started = Instant::now();
        let mut head = stream_head(format, request_id, h2)?;
        for (name, value) in extra {
            head.insert_header(name, value)?;
        }
        if session
            .write_response_header(Box::new(head), false)
            .await
            .is_err()
        {
            self.stream_cut(session, route, summary, format, refused, None);
            return Ok(());
        }
        let items = plan.items.len();
        let (sender, mut queue) = mpsc::unbounded_channel();
        let end = sender.clone();
        let metas = plan.meta;
        let mut statuses: Vec<Option<u16>> = vec![None; items];
        let unwritten = exec::Unwritten::default();
        let reply_cost = route.reply_cost;
        let (charged, resources) = (unwritten.clone(), observer.clone());
        let mut settled = move |index: usize, outcome: &Outcome| {
            if let Some(status) = statuses.get_mut(index) {
                *status = Some(outcome.status());
            }
            // The executor charged a kept answer (a response; one over the budget is a failure).
            let charge = match outcome {
                Outcome::Response(response) => Charge {
                    cost: reply_cost(response),
                    held: response.raw_size(),
                },
                Outcome::Failed(_) => Charge::default(),
            };
            let status_of = |i: usize| statuses.get(i).copied().flatten();
            match dialect.stream_record(&metas, index, outcome, &status_of) {
                Some(record) => {
                    let _ = sender.send(Message::Record {
                        index,
                        bytes: frame(format, record.json, None),
                        unusable: record.unusable,
                        fields_missing: record.fields_missing,
                        charge,
                    });
                }
                None => {
                    charge.settle(&charged, &resources);
                    let _ = sender.send(Message::Skip { index });
                }
            }
        };
        let client = observer.ticket.client();
        let (limits, upstream, _present) =
            self.prepare(route, plan.order, headers, client, Some(unwritten.clone()));
        let share = exec::Share {
            permits: &self.permits,
            client: observer.ticket.client(),
        };
        let mut written = Written::default();
        let (ran, wrote) = {
            let run = exec::run(
                &limits,
                share,
                plan.items,
                &plan.after,
                &upstream,
                &observer,
                &mut settled,
            )
            .instrument(span);
            tokio::pin!(run);
            let out = Out {
                format,
                in_order: bounds.map(|(open, _)| (open, InOrder::new(items))),
                unwritten: &unwritten,
                resources: &observer,
                ready: BytesMut::new(),
                charges: Vec::new(),
                piece: if h2 {
                    super::H2_REPLY_PIECE
                } else {
                    usize::MAX
                },
            };
            let writer = write_records(session, &mut queue, out, &mut written);
            tokio::pin!(writer);
            let mut ran = None;
            loop {
                tokio::select! {
                    finished = &mut run, if ran.is_none() => {
                        ran = Some(finished);
                        let _ = end.send(Message::End);
                    }
                    wrote = &mut writer => break (ran, wrote),
                }
            }
        };
        let first_item = written.first_at.map(|at| at.duration_since(started));
        let Some(ran) = ran.filter(|_| wrote.is_ok()) else {
            tracing::debug!(
                request_id,
                "the streamed reply could not be written to the client"
            );
            self.stream_cut(session, route, summary, format, refused, first_item);
            return Ok(());
        };
        summary.outcomes(&ran.outcomes);
        let settled = settled_items(&ran, summary.item_log());
        let classes = summary.completed(settled, &written.unusable, written.fields_missing);
        let last = match bounds {
            // The reply's closing bytes end a progressive reply.
            Some((_, close)) => Bytes::from_static(close),
            None => frame(
                format,
                terminal(items, written.records, &classes),
                Some("done"),
            ),
        };
        let last = session.write_response_body(Some(last), true).await;
        if last.is_err() {
            self.stream_cut(session, route, summary, format, 0, first_item);
            return Ok(());
        }
        summary.status = 200;
        if let Some(metrics) = &route.metrics {
            metrics.streamed(format, first_item, false);
        }
        Ok(())
    }

    /// The client left (or stopped reading) before the terminal record: the batch is
    /// cancelled, the connection (with part of a reply on it) is not kept.
    fn stream_cut(
        &self,
        session: &mut Session,
        route: &Route,
        summary: &mut BatchSummary,
        format: StreamFormat,
        refused: usize,
        first_item: Option<Duration>,
    ) {
        session.set_keepalive(None);
        summary.cancelled(refused);
        if let Some(metrics) = &route.metrics {
            metrics.streamed(format, first_item, true);
        }
    }
}

/// The head of a streamed reply: 200, the format's type, nothing cached or buffered on the
/// way, and chunked on HTTP/1.1 (so the connection stays reusable; HTTP/2 frames it).
fn stream_head(format: StreamFormat, request_id: &str, h2: bool) -> Result<ResponseHeader> {
    let mut head = ResponseHeader::build(200, Some(6))?;
    head.insert_header(CONTENT_TYPE, format.content_type())?;
    head.insert_header(CACHE_CONTROL, "no-cache")?;
    head.insert_header(ACCEL_BUFFERING, "no")?;
    head.insert_header(REQUEST_ID, request_id)?;
    if !h2 {
        head.insert_header(TRANSFER_ENCODING, "chunked")?;
    }
    Ok(head)
}

/// Where the writer's records go and what it releases as they are written.
struct Out<'a> {
    format: StreamFormat,
    /// A progressive reply: its opening bytes, and the answers waiting for earlier items.
    in_order: Option<(&'static [u8], InOrder)>,
    unwritten: &'a exec::Unwritten,
    resources: &'a ItemResources,
    /// Records ready to go in the next write, and what they count until it is done.
    ready: BytesMut,
    charges: Vec<Charge>,
    /// The largest piece handed to the client's stream at once (HTTP/2: a write timeout then
    /// measures a stall, not the time a large record takes, as for a buffered reply).
    piece: usize,
}

impl Out<'_> {
    /// Takes one message from the executor: a record joins the next write (or waits for
    /// earlier items, progressively). True once the run is over.
    fn take(&mut self, message: Option<Message>, written: &mut Written) -> bool {
        match message {
            Some(Message::Record {
                index,
                bytes,
                unusable,
                fields_missing,
                charge,
            }) => {
                if unusable {
                    written.unusable.push(index);
                }
                written.fields_missing += fields_missing;
                match &mut self.in_order {
                    Some((_, order)) => order.settle(index, Some((bytes, charge))),
                    None => self.add(&bytes, charge),
                }
            }
            Some(Message::Skip { index }) => {
                if let Some((_, order)) = &mut self.in_order {
                    order.settle(index, None);
                }
            }
            Some(Message::End) | None => return true,
        }
        false
    }

    fn add(&mut self, bytes: &[u8], charge: Charge) {
        self.ready.extend_from_slice(bytes);
        self.charges.push(charge);
    }

    /// Moves the finished prefix of a progressive reply to the next write.
    fn take_in_order(&mut self) {
        let Some((_, order)) = &mut self.in_order else {
            return;
        };
        while let Some(element) = order.pop() {
            if let Some((comma, bytes, charge)) = element {
                if comma {
                    self.ready.put_u8(b',');
                }
                self.ready.extend_from_slice(&bytes);
                self.charges.push(charge);
            }
        }
    }

    /// Writes what is ready in one body write and releases what it counted.
    async fn write(&mut self, session: &mut Session, written: &mut Written) -> Result<()> {
        if self.ready.is_empty() {
            return Ok(());
        }
        let bytes = self.ready.split().freeze();
        let mut at = 0;
        while at < bytes.len() {
            let end = at.saturating_add(self.piece).min(bytes.len());
            session
                .write_response_body(Some(bytes.slice(at..end)), false)
                .await?;
            at = end;
        }
        written.records += self.charges.len();
        written.first_at.get_or_insert_with(Instant::now);
        for charge in self.charges.drain(..) {
            charge.settle(self.unwritten, self.resources);
        }
        Ok(())
    }
}

/// Records that settle together leave in one write, up to this many bytes: one chunk and one
/// flush for many small records, while a large record still goes alone.
const COALESCE_BYTES: usize = 64 * 1024;

/// A progressive reply's answers in request order: each waits until every earlier item has
/// settled (what waits counts against the reply budget, as unwritten).
struct InOrder {
    /// Per item: not settled (`None`), settled without an element (`Some(None)`), or its
    /// element and what it counts until written.
    slots: Vec<Option<Option<(Bytes, Charge)>>>,
    next: usize,
    wrote_any: bool,
}

impl InOrder {
    fn new(items: usize) -> Self {
        InOrder {
            slots: (0..items).map(|_| None).collect(),
            next: 0,
            wrote_any: false,
        }
    }

    fn settle(&mut self, index: usize, element: Option<(Bytes, Charge)>) {
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(element);
        }
    }

    /// The next element of the finished prefix, and whether a `,` goes before it: `None` when
    /// the next item has not settled; `Some(None)` for an item without an element.
    fn pop(&mut self) -> Option<Option<(bool, Bytes, Charge)>> {
        let element = self.slots.get_mut(self.next)?.take()?;
        self.next += 1;
        Some(element.map(|(bytes, charge)| {
            let comma = std::mem::replace(&mut self.wrote_any, true);
            (comma, bytes, charge)
        }))
    }
}

/// Writes the queued records as they come (those already queued together, in one write), and
/// a keep-alive after `KEEPALIVE_AFTER` without one, until the run's end is queued, while
/// watching the client as a buffered batch does (`batch::watching_client`): one that closes or
/// resets ends the stream at once, not at the next write. An error: the client left or cannot
/// be written to.
async fn write_records(
    session: &mut Session,
    queue: &mut mpsc::UnboundedReceiver<Message>,
    mut out: Out<'_>,
    written: &mut Written,
) -> Result<()> {
    let format = out.format;
    if let Some((open, _)) = &out.in_order {
        // The reply's first bytes leave before any item has settled.
        session
            .write_response_body(Some(Bytes::from_static(open)), false)
            .await?;
    }
    // JSON has no room for a keep-alive that leaves the reply's bytes unchanged.
    let keepalives = out.in_order.is_none();
    let idle = tokio::time::sleep(KEEPALIVE_AFTER);
    tokio::pin!(idle);
    let mut watch_client = true;
    loop {
        let mut ended = false;
        tokio::select! {
            read = session.read_body_or_idle(true), if watch_client => match read {
                Err(e) => return Err(e),
                // Pipelined bytes are not an error: they stay pending.
                Ok(_) => watch_client = false,
            },
            message = queue.recv() => ended = out.take(message, written),
            () = &mut idle, if keepalives => {
                session.write_response_body(Some(keepalive(format)), false).await?;
            }
        }
        while !ended && out.ready.len() < COALESCE_BYTES {
            match queue.try_recv() {
                Ok(message) => ended = out.take(Some(message), written),
                Err(_) => break,
            }
        }
        out.take_in_order();
        out.write(session, written).await?;
        if ended {
            return Ok(());
        }
        idle.as_mut().reset(Instant::now() + KEEPALIVE_AFTER);
    }
}

#[cfg(test)]
mod tests;
