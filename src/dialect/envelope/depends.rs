//! Microsoft Graph's `dependsOn` (and the `depends_on` spelling of Graph's Python SDKs) on
//! envelope items: the lists turned into item indices for the executor, checked as a whole
//! before anything is sent (ids of this batch, not the item itself, no cycle), and the 424
//! answer that names the dependency which did not succeed.

use super::super::{FailureKind, Outcome, Rejection, RejectionKind};
use super::EnvelopeMeta;
use serde_json::value::RawValue;
use std::collections::HashMap;

pub(super) const CODE_DEPENDS_ON: &str = "InvalidParameter.DependsOn";

/// The index of the item with id `name`, for a reference from item `index`: it must be an
/// earlier item of this batch.
pub(super) fn earlier(
    name: &str,
    index: usize,
    ids: &HashMap<String, usize>,
) -> Result<usize, String> {
    match ids.get(name) {
        Some(&source) if source < index => Ok(source),
        Some(&source) if source == index => Err(format!("{name:?} is this item's own id")),
        Some(_) => Err(format!(
            "{name:?} is a later item: a reference names an earlier one"
        )),
        None => Err(format!("{name:?} is not an id of this batch")),
    }
}

/// `after` (empty: no dependencies yet) with each referring item's sources added: a reference
/// is a dependency. Checked again for cycles, since `dependsOn` may point forward.
pub(super) fn with_references(
    mut after: Vec<Vec<usize>>,
    referring: &[(usize, Vec<usize>)],
    items: usize,
) -> Result<Vec<Vec<usize>>, Rejection> {
    after.resize(items, Vec::new());
    for (index, sources) in referring {
        if let Some(dependencies) = after.get_mut(*index) {
            for source in sources {
                if !dependencies.contains(source) {
                    dependencies.push(*source);
                }
            }
        }
    }
    match cycle_member(&after) {
        Some(index) => Err(refuse(format!(
            "dependsOn and references form a cycle through requests[{index}]: no order can satisfy it"
        ))),
        None => Ok(after),
    }
}

/// Whether an item's dependency list names anything (absent, `null` and `[]` do not).
pub(super) fn names_any(raw: Option<&RawValue>) -> bool {
    raw.is_some_and(|d| d.get() != "null" && d.get().trim() != "[]")
}

fn refuse(message: String) -> Rejection {
    Rejection::new(RejectionKind::InvalidParameter, CODE_DEPENDS_ON, message)
}

/// Per item, the indices of the items it waits for; empty when no item names any. `ids`
/// maps each id to its item's index.
pub(super) fn resolve(
    lists: &[Option<&RawValue>],
    ids: &HashMap<String, usize>,
) -> Result<Vec<Vec<usize>>, Rejection> {
    if !lists.iter().any(|raw| names_any(*raw)) {
        return Ok(Vec::new());
    }
    let mut after = Vec::with_capacity(lists.len());
    for (index, raw) in lists.iter().enumerate() {
        let names: Vec<String> = match raw {
            Some(raw) if raw.get() != "null" => serde_json::from_str(raw.get()).map_err(|_| {
                refuse(format!(
                    "requests[{index}].dependsOn must be an array of ids (strings)"
                ))
            })?,
            _ => Vec::new(),
        };
        let mut dependencies: Vec<usize> = Vec::with_capacity(names.len());
        for name in &names {
            let Some(&dependency) = ids.get(name) else {
                return Err(refuse(format!(
                    "requests[{index}].dependsOn names {name:?}, which is not an id of this batch"
                )));
            };
            if dependency == index {
                return Err(refuse(format!(
                    "requests[{index}].dependsOn names its own id {name:?}"
                )));
            }
            // Named twice is still one dependency.
            if !dependencies.contains(&dependency) {
                dependencies.push(dependency);
            }
        }
        after.push(dependencies);
    }
    match cycle_member(&after) {
        Some(index) => Err(refuse(format!(
            "dependsOn forms a cycle through requests[{index}]: no order can satisfy it"
        ))),
        None => Ok(after),
    }
}

/// An item on a dependency cycle, if there is one (Kahn's algorithm: what can never be
/// ordered is on or behind a cycle; the lowest such index that is on one is reported).
fn cycle_member(after: &[Vec<usize>]) -> Option<usize> {
    let mut pending: Vec<usize> = after.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); after.len()];
    for (item, dependencies) in after.iter().enumerate() {
        for &dependency in dependencies {
            dependents[dependency].push(item);
        }
    }
    let mut free: Vec<usize> = (0..after.len()).filter(|&i| pending[i] == 0).collect();
    while let Some(item) = free.pop() {
        for &dependent in &dependents[item] {
            pending[dependent] -= 1;
            if pending[dependent] == 0 {
                free.push(dependent);
            }
        }
    }
    // Walk back from an unordered item through unordered dependencies: a finite graph
    // walk that never leaves the unordered set must come back to an item it visited.
    let start = (0..after.len()).find(|&i| pending[i] > 0)?;
    let mut seen = vec![false; after.len()];
    let mut item = start;
    while !seen[item] {
        seen[item] = true;
        item = *after[item].iter().find(|&&d| pending[d] > 0)?;
    }
    Some(item)
}

/// The outcome to write for an item that was not run because a dependency did not succeed:
/// the same failure, its detail naming the dependency's id and what it answered. `None` for
/// any other outcome.
pub(super) fn named(
    outcome: &Outcome,
    meta: &[EnvelopeMeta],
    status_of: &dyn Fn(usize) -> Option<u16>,
) -> Option<Outcome> {
    let Outcome::Failed(failure) = outcome else {
        return None;
    };
    let FailureKind::DependencyFailed { dependency } = failure.kind else {
        return None;
    };
    let id = String::from_utf8_lossy(&meta.get(dependency)?.id).into_owned();
    let status = status_of(dependency)?;
    let detail = format!("dependency {id} answered {status}");
    Some(Outcome::Failed(failure.clone().with_detail(detail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(texts: &[&str]) -> Vec<Box<RawValue>> {
        texts
            .iter()
            .map(|t| RawValue::from_string(t.to_string()).expect("valid JSON"))
            .collect()
    }

    fn run(texts: &[&str]) -> Result<Vec<Vec<usize>>, String> {
        let raw = lists(texts);
        let refs: Vec<Option<&RawValue>> = raw.iter().map(|r| Some(r.as_ref())).collect();
        let ids = (0..texts.len()).map(|i| (i.to_string(), i)).collect();
        resolve(&refs, &ids).map_err(|r| r.message)
    }

    #[test]
    fn lists_become_indices() {
        assert_eq!(
            run(&["null", "[]", "[]"]).unwrap(),
            Vec::<Vec<usize>>::new()
        );
        assert_eq!(
            run(&["[]", r#"["0"]"#, r#"["0","1","0"]"#]).unwrap(),
            [vec![], vec![0], vec![0, 1]]
        );
        // A dependency later in the batch is fine: order is the graph's, not the array's.
        assert_eq!(run(&[r#"["1"]"#, "[]"]).unwrap(), [vec![1], vec![]]);
    }

    #[test]
    fn unknown_self_and_malformed_are_refused() {
        assert!(run(&["[]", r#"["7"]"#])
            .unwrap_err()
            .contains("\"7\", which is not an id"));
        assert!(run(&[r#"["0"]"#]).unwrap_err().contains("its own id"));
        assert!(run(&["[]", "[1]"]).unwrap_err().contains("array of ids"));
        assert!(run(&["[]", r#""0""#]).unwrap_err().contains("array of ids"));
    }

    #[test]
    fn cycles_are_refused_naming_a_member() {
        let err = run(&[r#"["1"]"#, r#"["2"]"#, r#"["0"]"#]).unwrap_err();
        assert!(err.contains("cycle through requests[0]"), "{err}");
        // An item behind a cycle is not on it: the cycle's member is named.
        let err = run(&["[]", r#"["2"]"#, r#"["3"]"#, r#"["2"]"#, r#"["1"]"#]).unwrap_err();
        assert!(
            err.contains("requests[2]") || err.contains("requests[3]"),
            "{err}"
        );
    }
}
