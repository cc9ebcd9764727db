//! The routing table and what a reload does to it: the batch routes, the pass-through target
//! and the upstream clients behind them (`Live`), built from a validated config, swapped whole
//! by a reload (`Reconfigure::apply`) with the clients and pools it may keep.

use crate::config::{Config, RouteConfig, UpstreamConfig};
use crate::dialect::{RouteDialect, UpstreamResponse};
use crate::metrics::{PassthroughMetrics, RouteMetrics};
use crate::upstream::UpstreamClient;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A batch route ready to serve.
pub struct Route {
    pub config: Arc<RouteConfig>,
    pub dialect: RouteDialect,
    /// The dialect's `Dialect::reply_cost`, for the executor's reply budget.
    pub reply_cost: fn(&UpstreamResponse) -> usize,
    pub upstream: Arc<UpstreamClient>,
    pub metrics: Option<Arc<RouteMetrics>>,
    /// What tells this route's clients apart (the route's own, else the server's).
    pub client_key: crate::config::ClientKey,
    /// Its item cache (`[routes.cache]`; none: off). A reload keeps it when it would hold the
    /// same answers (`kept_cache`), else starts it empty.
    pub cache: Option<Arc<crate::cache::ItemCache>>,
    /// Its gatherings of calls into upstream batches (`[routes.upstream_batching]`).
    pub batcher: Option<Arc<crate::upstream_batch::Batcher>>,
}

/// The pass-through target.
pub(super) struct Passthrough {
    pub(super) client: Arc<UpstreamClient>,
    pub(super) metrics: Option<PassthroughMetrics>,
}

/// What a reload swaps: the routes, the pass-through target and the upstream clients behind
/// them. A request takes one snapshot when it arrives (`RequestCtx::live`) and finishes on it,
/// so a batch that started on the old config finishes on it.
pub struct Live {
    pub(super) routes: HashMap<String, Arc<Route>>,
    /// Single-id routes, whose paths have an `{id}` in them: looked at when no path matches.
    templated: Vec<Arc<Route>>,
    pub(super) passthrough: Option<Passthrough>,
    /// By upstream name: what the next reload may keep (and with it the connection pools).
    clients: HashMap<String, Arc<UpstreamClient>>,
    /// The routes' rate limits (kept by a reload that leaves `[rate_limits]` as it was, and
    /// with it the local counts and the Redis connection).
    pub(super) limiter: Arc<crate::rate_limit::Limiter>,
}

impl Live {
    /// The routing table of `config`. An upstream whose settings are unchanged from
    /// `previous` keeps its client, and with it its pooled connections; one whose timeouts
    /// changed but whose connections would be the same keeps the pools
    /// (`UpstreamClient::renewed`).
    /// `admission`: the memory budget the routes' item caches count against.
    pub(super) fn build(
        config: &Config,
        previous: Option<&Live>,
        admission: &Arc<crate::admission::Admission>,
    ) -> Live {
        let mut clients = HashMap::new();
        for upstream in &config.upstreams {
            client_for(&mut clients, upstream, previous);
        }
        let mut routes = HashMap::new();
        for route in &config.routes {
            let upstream = client_for(&mut clients, &route.upstream, previous);
            let client_key = route
                .client_key
                .clone()
                .unwrap_or_else(|| config.server.admission.client_key.clone());
            routes.insert(
                route.path.clone(),
                Arc::new(build_route(
                    route, &upstream, client_key, admission, previous,
                )),
            );
        }
        let passthrough = config.default_upstream.as_ref().map(|upstream| {
            let client = client_for(&mut clients, upstream, previous);
            Passthrough {
                metrics: PassthroughMetrics::new(&client.config.name),
                client,
            }
        });
        let limiter = crate::rate_limit::limiter_for(
            &config.rate_limits,
            previous.map(|p| &p.limiter),
            crate::metrics::rate_limit_store,
        );
        let templated = routes
            .values()
            .filter(|r| matches!(r.config.dialect, crate::config::DialectConfig::Single(_)))
            .cloned()
            .collect();
        Live {
            routes,
            templated,
            passthrough,
            clients,
            limiter,
        }
    }

    /// The route that serves `method path`: the one with that path, else a single-id route
    /// whose path it is with a usable id in place of `{id}`, for a `GET` (the call it gathers;
    /// other methods on that path, and unusable ids, are the upstream's to answer: passed through).
    pub(super) fn route_for(&self, method: &http::Method, path: &str) -> Option<Arc<Route>> {
        if let Some(route) = self.routes.get(path) {
            return Some(route.clone());
        }
        if method != http::Method::GET {
            return None;
        }
        self.templated
            .iter()
            .find(|route| match &route.config.dialect {
                crate::config::DialectConfig::Single(single) => single.id_of(path).is_some(),
                _ => false,
            })
            .cloned()
    }

    /// (route name, upstream name) of every route.
    fn route_upstreams(&self) -> impl Iterator<Item = (&str, &str)> {
        self.routes
            .values()
            .map(|r| (r.config.name.as_str(), r.upstream.config.name.as_str()))
    }
}

/// The one client of `upstream` in the table being built: made once, from the previous
/// table's when a reload may keep it.
fn client_for(
    clients: &mut HashMap<String, Arc<UpstreamClient>>,
    upstream: &Arc<UpstreamConfig>,
    previous: Option<&Live>,
) -> Arc<UpstreamClient> {
    clients
        .entry(upstream.name.clone())
        .or_insert_with(
            || match previous.and_then(|p| p.clients.get(&upstream.name)) {
                Some(old) if crate::upstream::same_settings(&old.config, upstream) => old.clone(),
                Some(old) => Arc::new(UpstreamClient::renewed(upstream.clone(), old)),
                None => Arc::new(UpstreamClient::new(upstream.clone())),
            },
        )
        .clone()
}

fn build_route(
    route: &Arc<RouteConfig>,
    upstream: &Arc<UpstreamClient>,
    client_key: crate::config::ClientKey,
    admission: &Arc<crate::admission::Admission>,
    previous: Option<&Live>,
) -> Route {
    let dialect = RouteDialect::new(
        &route.dialect,
        route.limits.max_items,
        &upstream.config.name,
    );
    let metrics = RouteMetrics::new(&route.name, &upstream.config.name).map(Arc::new);
    let kept = previous.and_then(|previous| kept_cache(previous, route, upstream));
    let cache = kept.or_else(|| {
        route.cache.as_ref().map(|config| {
            let counted = metrics.clone();
            Arc::new(crate::cache::ItemCache::new(
                config,
                admission.clone(),
                move || {
                    if let Some(metrics) = &counted {
                        metrics.cache_evicted();
                    }
                },
            ))
        })
    });
    let batcher = route.upstream_batching.as_ref().map(|config| {
        let shape = match &route.dialect {
            crate::config::DialectConfig::Single(single) => {
                crate::upstream_batch::Shape::IdList(single.id_list.clone(), single.clone())
            }
            _ => crate::upstream_batch::Shape::JsonRpc,
        };
        Arc::new(crate::upstream_batch::Batcher::new(
            config.clone(),
            shape,
            metrics.clone(),
        ))
    });
    Route {
        config: route.clone(),
        batcher,
        reply_cost: dialect.reply_cost(),
        dialect,
        upstream: upstream.clone(),
        metrics,
        client_key,
        cache,
    }
}

/// The previous config's cache of the route of the same name, when what it holds is still
/// right: the same cache settings (and so the same keys), and the same upstream client (one
/// whose settings, addresses among them, did not change).
fn kept_cache(
    previous: &Live,
    route: &RouteConfig,
    upstream: &Arc<UpstreamClient>,
) -> Option<Arc<crate::cache::ItemCache>> {
    let old = previous
        .routes
        .values()
        .find(|r| r.config.name == route.name)?;
    let same = Arc::ptr_eq(&old.upstream, upstream)
        && old.config.cache.as_deref() == route.cache.as_deref()
        && old.config.coalesce.as_deref() == route.coalesce.as_deref();
    old.cache.clone().filter(|_| same)
}

/// What a reload changes in a running `BatchGate` (`crate::reload`).
#[derive(Clone)]
pub struct Reconfigure {
    pub(super) live: Arc<ArcSwap<Live>>,
    pub(super) permits: Arc<crate::permits::Permits>,
    pub(super) admission: Arc<crate::admission::Admission>,
    pub(super) item_log: Arc<AtomicBool>,
    pub(super) access_log: Arc<AtomicBool>,
    pub(super) passthrough_lane: Arc<AtomicBool>,
}

impl Reconfigure {
    /// The routes of the config in effect, by name (the status page).
    pub fn route_configs(&self) -> Vec<Arc<RouteConfig>> {
        let live = self.live.load();
        let mut routes: Vec<Arc<RouteConfig>> =
            live.routes.values().map(|r| r.config.clone()).collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        routes
    }

    /// The upstream clients of the config in effect (health checks, `/readyz`).
    pub fn upstream_clients(&self) -> Vec<Arc<UpstreamClient>> {
        self.live.load().clients.values().cloned().collect()
    }

    /// Applies a validated config: limits first, then the new routing table in one swap.
    /// Requests already routed keep the old table; metric series of routes that are gone
    /// (or moved to another upstream) are removed.
    pub fn apply(&self, config: &Config) {
        let max_in_flight = config.server.max_in_flight;
        self.admission
            .reconfigure(config.server.admission.clone(), max_in_flight);
        self.permits.resize(max_in_flight);
        self.item_log
            .store(config.server.item_log, Ordering::Relaxed);
        self.access_log
            .store(config.server.access_log, Ordering::Relaxed);
        self.passthrough_lane
            .store(config.server.passthrough_lane, Ordering::Relaxed);
        if let Some(families) = crate::metrics::families() {
            families
                .max_in_flight
                .set(i64::try_from(max_in_flight).unwrap_or(i64::MAX));
        }
        let old = self.live.load_full();
        for (route, upstream) in old.route_upstreams() {
            let kept = config.routes.iter().find(|r| r.name == route);
            let same_upstream = kept.is_some_and(|r| r.upstream.name == upstream);
            if !same_upstream {
                RouteMetrics::remove(route, upstream, kept.is_none());
            }
        }
        for client in old.clients.values() {
            let new = config
                .upstreams
                .iter()
                .find(|u| u.name == client.config.name);
            // A replaced client's handles to the removed series are detached by this: its
            // late writes land nowhere (`metrics::UpstreamMetrics`).
            crate::metrics::remove_upstream_series(&client.config, new.map(|u| &**u));
        }
        self.live
            .store(Arc::new(Live::build(config, Some(&old), &self.admission)));
    }
}
