//! The configuration file as the operator writes it: serde types that mirror the TOML text.
//!
//! Every table denies unknown keys so a typo is an error, not a silently ignored setting.
//! Nothing here is validated beyond its TOML type; `validate.rs` turns these into checked
//! runtime types and reports every problem with its key path.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The JSON Schema of the file (draft 2020-12), for editors (taplo, Even Better TOML) and
/// for checking configs written elsewhere: every table, key and type that parsing accepts.
pub fn schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(FileConfig)).unwrap_or_default();
    if let Some(object) = schema.as_object_mut() {
        object.insert("title".into(), "batchgate configuration".into());
    }
    schema
}

/// The whole file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSection>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    pub rate_limits: Option<RateLimitsSection>,
    pub tracing: Option<TracingSection>,
}

/// `[tracing]`: OpenTelemetry traces, exported over OTLP/HTTP (protobuf); off without it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// The collector's OTLP/HTTP URL (`http://127.0.0.1:4318`; `/v1/traces` is added to a URL
    /// without a path).
    pub otlp_endpoint: String,
    /// Share of new traces recorded, 0 to 1 (a client's sampled `traceparent` is followed).
    pub sampling_ratio: Option<f64>,
    /// Whether a client's `traceparent` decides if its batch is recorded (else the ratio does).
    pub follow_client_sampling: Option<bool>,
    pub service_name: Option<String>,
    /// Finished spans waiting for export at most; more are dropped and counted.
    pub max_queued_spans: Option<i64>,
    pub export_timeout: Option<String>,
}

/// `[rate_limits]`: where shared rate-limit counts are kept (`[routes.rate_limit]`).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsSection {
    pub redis_url: Option<String>,
    pub redis_timeout: Option<String>,
    pub redis_key_prefix: Option<String>,
    pub redis_retry_interval: Option<String>,
    pub max_local_clients: Option<i64>,
}

/// `[routes.id_list]` of a single route: the upstream id-list call.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdListSection {
    pub method: Option<String>,
    pub path: String,
    pub ids: String,
    pub list_field: Option<String>,
    pub id_field: String,
    pub answer: Option<BTreeMap<String, String>>,
    pub missing_status: Option<i64>,
}

/// `[routes.upstream_batching]`: single calls gathered into upstream batches.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamBatchingSection {
    pub max_items: Option<i64>,
    pub max_bytes: Option<i64>,
    pub max_wait: Option<String>,
    pub max_concurrent: Option<i64>,
}

/// `[routes.rate_limit]`: items per second per client.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub items_per_second: Option<f64>,
    pub burst: Option<i64>,
    pub store: Option<String>,
    pub on_store_error: Option<String>,
    pub local_fraction: Option<f64>,
    pub weights: Option<BTreeMap<String, i64>>,
    pub lease: Option<i64>,
}

/// `[server]`: the listener, process and pingora settings.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: Option<Vec<String>>,
    pub threads: Option<i64>,
    pub work_stealing: Option<bool>,
    pub default_upstream: Option<String>,
    pub max_in_flight: Option<i64>,
    pub grace_period: Option<String>,
    pub graceful_shutdown_timeout: Option<String>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub item_log: Option<bool>,
    pub access_log: Option<bool>,
    pub passthrough_lane: Option<bool>,
    pub client_idle_timeout: Option<String>,
    pub client_header_timeout: Option<String>,
    pub client_body_timeout: Option<String>,
    pub client_body_min_rate: Option<i64>,
    pub max_client_connections: Option<i64>,
    pub client_max_head_bytes: Option<i64>,
    pub client_max_h2_streams: Option<i64>,
    pub client_h2_max_premature_resets: Option<i64>,
    pub client_send_timeout: Option<String>,
    pub tls_listen: Option<Vec<String>>,
    pub h2c: Option<bool>,
    pub tls: Option<ServerTlsSection>,
    pub admission: Option<AdmissionSection>,
}

/// `[server.admission]`: the bounded queue of batches waiting for permits.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSection {
    pub max_queued_items: Option<i64>,
    pub queue_budget: Option<String>,
    pub max_held_bytes: Option<i64>,
    pub per_client_items: Option<i64>,
    pub client_key: Option<String>,
}

/// `[server.tls]`: what the `tls_listen` listeners serve.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsSection {
    #[serde(default)]
    pub certificates: Vec<TlsCertificateSection>,
    pub min_version: Option<String>,
    pub client_ca_file: Option<String>,
    pub http2: Option<bool>,
}

/// `[[server.tls.certificates]]`: one certificate chain and its key (PEM files).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificateSection {
    pub cert_file: String,
    pub key_file: String,
}

/// `[admin]`: the separate listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<String>,
    pub enabled: Option<bool>,
}

/// `[upstreams.NAME]`: one upstream API.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub addresses: Vec<String>,
    pub host: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub write_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub pool_size: Option<i64>,
    pub balance: Option<String>,
    pub hash_on: Option<String>,
    pub weights: Option<Vec<i64>>,
    pub eject_after: Option<i64>,
    pub eject_for: Option<String>,
    pub eject_on_5xx: Option<bool>,
    pub retry: Option<RetrySection>,
    pub health_check: Option<HealthCheckSection>,
    pub protocol: Option<String>,
    pub max_h2_streams: Option<i64>,
    pub pipeline_depth: Option<i64>,
    pub pipeline_max_delay: Option<String>,
    pub tls: Option<bool>,
    pub sni: Option<String>,
    pub ca_file: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
}

/// `[upstreams.NAME.retry]`: retries per item (`config::resilience`).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    pub attempts: Option<i64>,
    pub on: Option<Vec<RetryOnValue>>,
    pub backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub max_retry_after: Option<String>,
    pub budget: Option<f64>,
    pub min_retries_per_second: Option<i64>,
}

/// One `retry.on` entry: a condition name, or a status as a number or a string.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum RetryOnValue {
    Name(String),
    Status(i64),
}

impl RetryOnValue {
    /// As written, for error messages.
    pub fn shown(&self) -> String {
        match self {
            RetryOnValue::Name(name) => format!("{name:?}"),
            RetryOnValue::Status(code) => code.to_string(),
        }
    }
}

/// `[upstreams.NAME.health_check]`: active checks of every address.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    pub path: Option<String>,
    pub expect_status: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_after: Option<i64>,
    pub unhealthy_after: Option<i64>,
}

/// `[[routes]]`: one batch endpoint. Dialect-specific keys are checked against `dialect`
/// during validation, so each route stays one flat table that is easy to read and to locate
/// errors in.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: Option<String>,
    pub path: String,
    pub dialect: String,
    pub upstream: Option<String>,
    pub max_items: Option<i64>,
    pub concurrency: Option<i64>,
    pub item_timeout: Option<String>,
    pub batch_timeout: Option<String>,
    pub max_body_bytes: Option<i64>,
    pub max_item_response_bytes: Option<i64>,
    pub max_reply_bytes: Option<i64>,
    pub forward_headers: Option<Vec<String>>,
    pub client_key: Option<String>,
    pub idempotent_methods: Option<Vec<String>>,
    pub hedge_after: Option<String>,
    pub stream: Option<Vec<String>>,
    pub coalesce: Option<CoalesceSection>,
    pub cache: Option<CacheSection>,
    pub rate_limit: Option<RateLimitSection>,
    pub upstream_batching: Option<UpstreamBatchingSection>,
    // single
    pub id_list: Option<IdListSection>,
    // envelope
    pub base_path: Option<String>,
    pub allowed_methods: Option<Vec<String>>,
    pub allowed_resources: Option<Vec<String>>,
    pub allowed_url_prefixes: Option<Vec<String>>,
    pub public_origins: Option<Vec<String>>,
    pub reply_body: Option<String>,
    pub sequential: Option<bool>,
    pub stop_on_failure: Option<bool>,
    pub dependencies: Option<String>,
    // multipart (with base_path, allowed_methods, allowed_url_prefixes, public_origins)
    pub max_part_bytes: Option<i64>,
    pub max_part_head_bytes: Option<i64>,
    pub reply_content_id: Option<String>,
    // jsonrpc (`allowed_methods` above then names JSON-RPC methods)
    pub upstream_path: Option<String>,
    pub denied_methods: Option<Vec<String>>,
    pub profile: Option<JsonRpcProfileSection>,
    // fanout
    pub methods: Option<Vec<String>>,
    pub ids: Option<FanoutIdsSection>,
    pub params: Option<Vec<FieldRuleSection>>,
    pub headers: Option<Vec<FieldRuleSection>>,
    pub request: Option<FanoutRequestSection>,
    pub reply: Option<FanoutReplySection>,
    pub on_item_error: Option<String>,
    // envelope and fanout
    pub error_format: Option<String>,
}

/// `[routes.coalesce]`: identical items in flight at once are sent once.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CoalesceSection {
    pub methods: Option<Vec<String>>,
    pub public: Option<bool>,
    pub key_headers: Option<Vec<String>>,
}

/// `[routes.cache]`: fresh answers of identical items are served from memory.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub max_bytes: Option<i64>,
    pub ttl: Option<String>,
    pub ttl_by_method: Option<std::collections::BTreeMap<String, String>>,
    pub methods: Option<Vec<String>>,
    pub public: Option<bool>,
    pub key_headers: Option<Vec<String>>,
}

/// `[routes.ids]` of a fanout route: where the id list comes from.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FanoutIdsSection {
    pub param: String,
    pub collapse_duplicates: Option<bool>,
    pub max_length: Option<i64>,
}

/// `[[routes.params]]` / `[[routes.headers]]`: one validated parameter or header.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldRuleSection {
    pub name: String,
    pub required: Option<bool>,
    pub min_length: Option<i64>,
    pub max_length: Option<i64>,
    /// Headers only: copy into every per-id request (default true).
    pub forward: Option<bool>,
}

/// `[routes.request]` of a fanout route: the per-id upstream request.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FanoutRequestSection {
    pub method: Option<String>,
    pub path: String,
}

/// `[routes.reply]` of a fanout route: how the merged reply is built.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FanoutReplySection {
    pub list_field: String,
    /// Element fields in order: `"$id"`, or a JSON pointer into the per-id reply (`""` is
    /// the whole reply). Without `fields`, each element is the per-id reply as it came.
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub fields: Option<toml::Table>,
    /// A field whose pointer names nothing in a part's reply: `"null"` (the default) or
    /// `"error"` (the part fails as `UpstreamReplyFieldMissing`).
    pub missing_field: Option<String>,
}

/// `[routes.profile]` of a jsonrpc route: where a vendor differs from the specification.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonRpcProfileSection {
    pub too_many_code: Option<i64>,
    pub too_many_message: Option<String>,
    pub empty_code: Option<i64>,
    pub empty_message: Option<String>,
    /// `"object"` or `"array"`: how batch-level errors are returned.
    pub batch_errors: Option<String>,
    pub unique_ids: Option<bool>,
}
