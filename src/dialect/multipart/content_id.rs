//! OData references between parts: a part whose target starts with `$<Content-ID>` of an
//! earlier part (`$1/Orders`) waits for that part and is sent to what it created: the
//! earlier answer's `Location` (or its JSON body's `@odata.id`), followed by the rest of the
//! target. The finished target goes through the same url guard as any part's
//! (`target_path`): a `Location` on another host is refused, never followed.

use super::{target_path, Multipart, MultipartMeta};
use crate::config::multipart::MultipartConfig;
use crate::dialect::{
    Failure, FailureKind, Outcome, Plan, Planned, Rejection, RejectionKind, Sent, SubRequest,
};
use crate::item::{Answers, RequestTemplate};
use std::collections::HashMap;
use std::sync::Arc;

/// Turns each part whose target (`targets`: index and target as written) starts with `$` and
/// the Content-ID of an earlier part into one that waits for it. A `$name` naming no part is
/// an OData system resource (`$metadata`) and stays as it is; one naming a later part (or the
/// part itself) refuses the batch.
pub(super) fn refer(
    multipart: &Multipart,
    authority: Option<&str>,
    plan: &mut Plan<MultipartMeta>,
    targets: Vec<(usize, String)>,
) -> Result<(), Rejection> {
    if targets.is_empty() {
        return Ok(());
    }
    let ids: HashMap<&str, usize> = plan
        .meta
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.content_id.as_deref().map(|id| (id, i)))
        .collect();
    let mut referring = Vec::new();
    for (index, target) in targets {
        let name_end = target[1..]
            .find(['/', '?'])
            .map_or(target.len(), |at| at + 1);
        let Some(&source) = ids.get(&target[1..name_end]) else {
            continue;
        };
        if source >= index {
            return Err(Rejection::new(
                RejectionKind::InvalidItem,
                super::CODE_PART,
                format!(
                    "part {} refers to {}, which is not an earlier part",
                    index + 1,
                    &target[..name_end]
                ),
            ));
        }
        referring.push((index, source, target[name_end..].to_string(), target));
    }
    if referring.is_empty() {
        return Ok(());
    }
    plan.after.resize(plan.items.len(), Vec::new());
    for (index, source, rest, written) in referring {
        let Some(Ok(Planned::Ready(request))) = plan.items.get(index) else {
            continue;
        };
        let deferred = ContentIdReference {
            request: request.clone(),
            sources: [source],
            rest,
            written,
            config: multipart.config.clone(),
            authority: authority.map(str::to_string),
        };
        plan.items[index] = Ok(Planned::Deferred(Box::new(deferred)));
        plan.after[index].push(source);
    }
    Ok(())
}

/// A part sent to what an earlier part created.
#[derive(Debug)]
struct ContentIdReference {
    /// The part as checked with its target as written (method, headers and body stay).
    request: SubRequest,
    sources: [usize; 1],
    /// The target after `$<Content-ID>`.
    rest: String,
    /// The target as written, for messages.
    written: String,
    config: Arc<MultipartConfig>,
    authority: Option<String>,
}

impl RequestTemplate for ContentIdReference {
    fn sources(&self) -> &[usize] {
        &self.sources
    }

    fn finish(&self, answers: Answers<'_>) -> Result<SubRequest, Failure> {
        let unresolved = |why: &str| {
            Failure::new(FailureKind::ReferenceUnresolved, Sent::Nothing)
                .with_detail(format!("{}: {why}", self.written))
        };
        let created = match answers(self.sources[0]) {
            Some(Outcome::Response(r)) if (200..300).contains(&r.status) => created_url(r)
                .ok_or_else(|| unresolved("that part's answer has no Location nor @odata.id"))?,
            _ => return Err(unresolved("that part did not succeed")),
        };
        let target = format!("{created}{}", self.rest);
        let path = target_path(&self.config, self.authority.as_deref(), &target)
            .map_err(|refusal| Failure::new(FailureKind::Refused(refusal), Sent::Nothing))?;
        Ok(SubRequest {
            path,
            ..self.request.clone()
        })
    }
}

/// What an answer says it created: its `Location`, else its JSON body's `@odata.id`.
fn created_url(response: &crate::item::UpstreamResponse) -> Option<String> {
    if let Some(location) = response.headers.get(http::header::LOCATION) {
        return location.to_str().ok().map(str::to_string);
    }
    let body: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
    body.get("@odata.id")?.as_str().map(str::to_string)
}
