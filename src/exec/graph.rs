//! Dependencies between the items of one batch (Microsoft Graph's `dependsOn`): which item
//! may start next, and which can no longer run because an item it depends on did not succeed.
//! The executor's one loop asks it (with no dependencies every item is ready at once, lowest
//! index first); it does no I/O and keeps no clock.

use crate::item::{Outcome, Planned};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The dependency state of one batch run.
pub(super) struct Graph {
    /// Items not started (or answered) yet, by index; `None` once taken, and for items the
    /// dialect already decided.
    waiting: Vec<Option<Planned>>,
    /// Per item, the items that wait for it.
    dependents: Vec<Vec<usize>>,
    /// Per item, how many of its dependencies have not finished.
    pending: Vec<usize>,
    /// Per item, the first of its dependencies that did not succeed.
    blocked_by: Vec<Option<usize>>,
    /// Items whose dependencies all succeeded, lowest index first (request order breaks ties,
    /// so a sequential run with dependencies still goes in request order where it can).
    ready: BinaryHeap<Reverse<usize>>,
    /// Items that can no longer run, to be answered 424.
    blocked: Vec<usize>,
}

/// Whether an item succeeded as a dependency: it answered 2xx (Graph's rule).
pub(super) fn succeeded(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Response(r) if (200..300).contains(&r.status))
}

impl Graph {
    /// `after[i]` lists the items item `i` waits for; the dialect has checked them (in range,
    /// no item twice, no cycle). `decided[i]` is the outcome of an item the dialect already
    /// answered (refused): it counts as finished from the start.
    pub(super) fn new(
        to_send: Vec<(usize, Planned)>,
        after: &[Vec<usize>],
        decided: &[Option<Outcome>],
    ) -> Self {
        let count = decided.len();
        let mut waiting: Vec<Option<Planned>> = (0..count).map(|_| None).collect();
        for (index, request) in to_send {
            waiting[index] = Some(request);
        }
        // Most batches have no dependencies: then nothing but `waiting` and `ready` is kept
        // (every lookup of the others is by `get`, and finds nothing to do).
        let edges = after.iter().any(|dependencies| !dependencies.is_empty());
        let per_item = if edges { count } else { 0 };
        let mut dependents = vec![Vec::new(); per_item];
        let mut pending = vec![0; per_item];
        for (item, dependencies) in after.iter().enumerate().take(per_item) {
            for &dependency in dependencies.iter().filter(|&&d| d < count) {
                dependents[dependency].push(item);
                pending[item] += 1;
            }
        }
        let ready = (0..count)
            .filter(|&i| pending.get(i).is_none_or(|&p| p == 0) && waiting[i].is_some())
            .map(Reverse)
            .collect();
        let mut graph = Graph {
            waiting,
            dependents,
            pending,
            blocked_by: vec![None; per_item],
            ready,
            blocked: Vec::new(),
        };
        for (index, outcome) in decided.iter().enumerate() {
            if let Some(outcome) = outcome {
                graph.finished(index, succeeded(outcome));
            }
        }
        graph
    }

    /// The next item whose dependencies all succeeded, lowest index first.
    pub(super) fn pop_ready(&mut self) -> Option<(usize, Planned)> {
        while let Some(Reverse(index)) = self.ready.pop() {
            if let Some(request) = self.waiting[index].take() {
                return Some((index, request));
            }
        }
        None
    }

    /// An item that can no longer run, with the dependency that did not succeed. The caller
    /// answers it and reports it `finished` (failed), which blocks its own dependents.
    pub(super) fn take_blocked(&mut self) -> Option<(usize, usize)> {
        while let Some(index) = self.blocked.pop() {
            if self.waiting[index].take().is_some() {
                let dependency = self.blocked_by[index].unwrap_or(index);
                return Some((index, dependency));
            }
        }
        None
    }

    /// Item `index` finished; its dependents become ready, or blocked if it failed.
    pub(super) fn finished(&mut self, index: usize, ok: bool) {
        let Some(dependents) = self.dependents.get_mut(index) else {
            return;
        };
        for dependent in std::mem::take(dependents) {
            self.pending[dependent] -= 1;
            if self.blocked_by[dependent].is_some() {
                continue;
            }
            if !ok {
                // At once, not when its other dependencies finish: it cannot run anyway.
                self.blocked_by[dependent] = Some(index);
                self.blocked.push(dependent);
            } else if self.pending[dependent] == 0 {
                self.ready.push(Reverse(dependent));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{FailureKind, Sent, SubRequest};
    use http::Method;

    fn request() -> Planned {
        Planned::Ready(SubRequest {
            method: Method::GET,
            path: "/x".into(),
            headers: Vec::new(),
            body: None,
        })
    }

    fn graph(count: usize, after: &[Vec<usize>]) -> Graph {
        let to_send = (0..count).map(|i| (i, request())).collect();
        Graph::new(to_send, after, &vec![None; count])
    }

    fn ready(graph: &mut Graph) -> Vec<usize> {
        std::iter::from_fn(|| graph.pop_ready().map(|(i, _)| i)).collect()
    }

    #[test]
    fn items_start_when_every_dependency_succeeded() {
        // 0 <- 1 <- 2, and 3 waits for 0 and 2.
        let mut g = graph(4, &[vec![], vec![0], vec![1], vec![0, 2]]);
        assert_eq!(ready(&mut g), [0]);
        g.finished(0, true);
        assert_eq!(ready(&mut g), [1]);
        g.finished(1, true);
        assert_eq!(ready(&mut g), [2]);
        g.finished(2, true);
        assert_eq!(ready(&mut g), [3]);
        assert!(g.take_blocked().is_none());
    }

    #[test]
    fn a_failure_blocks_its_dependents_at_once_and_transitively() {
        let mut g = graph(4, &[vec![], vec![], vec![0, 1], vec![2]]);
        assert_eq!(ready(&mut g), [0, 1]);
        g.finished(1, false);
        // 2 is blocked although 0 is still running.
        assert_eq!(g.take_blocked(), Some((2, 1)));
        assert!(g.take_blocked().is_none());
        g.finished(2, false);
        assert_eq!(g.take_blocked(), Some((3, 2)));
        g.finished(0, true);
        assert!(ready(&mut g).is_empty(), "blocked items never become ready");
    }

    #[test]
    fn an_item_refused_by_the_dialect_blocks_its_dependents() {
        let refused = Outcome::failed(FailureKind::NotRun, Sent::Nothing);
        let mut g = Graph::new(
            vec![(1, request())],
            &[vec![], vec![0]],
            &[Some(refused), None],
        );
        assert!(ready(&mut g).is_empty());
        assert_eq!(g.take_blocked(), Some((1, 0)));
    }

    #[test]
    fn ties_go_in_request_order() {
        let mut g = graph(4, &[vec![3], vec![3], vec![], vec![]]);
        assert_eq!(ready(&mut g), [2, 3]);
        g.finished(3, true);
        assert_eq!(ready(&mut g), [0, 1]);
    }
}
