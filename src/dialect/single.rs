//! The single-id dialect (`dialect = "single"`): one call per request, `GET` on a path with an
//! id in it (`/v2/servicerequest/accessorys/{id}/access-url`), answered with that id's entry.
//! Its calls are gathered into one upstream id-list call (`[routes.id_list]`,
//! `crate::upstream_batch`), the reverse of the fan-out dialect. A request is a batch of one
//! item: reading, admission, rate limits and metrics are every route's.

use super::{BatchRequest, Dialect, Order, Plan, Planned, Rejection, RejectionKind, Reply};
use crate::config::upstream_batch::SingleConfig;
use crate::item::{Outcome, SubRequest};
use http::header::CONTENT_TYPE;
use http::Method;
use serde_json::json;
use std::sync::Arc;

#[derive(Debug)]
pub struct Single {
    pub config: Arc<SingleConfig>,
}

impl Dialect for Single {
    type Meta = ();

    fn decode(&self, request: &BatchRequest<'_>) -> Result<Plan<()>, Rejection> {
        if self.config.id_of(request.path).is_none() {
            return Err(Rejection::new(
                RejectionKind::InvalidParameter,
                "InvalidParameter.Id",
                "the id in the path is empty, too long, or has characters other than letters, digits and -._~",
            ));
        }
        let path = match request.query {
            Some(query) => format!("{}?{query}", request.path),
            None => request.path.to_string(),
        };
        let item = SubRequest {
            method: Method::GET,
            path,
            headers: Vec::new(),
            body: None,
        };
        Ok(Plan {
            meta: vec![()],
            items: vec![Ok(Planned::Ready(item))],
            order: Order::default(),
            after: Vec::new(),
        })
    }

    fn encode(&self, _meta: Vec<()>, outcomes: Vec<Outcome>) -> Reply {
        match outcomes.into_iter().next() {
            Some(Outcome::Response(response)) => Reply {
                status: response.status,
                content_type: response.headers.get(CONTENT_TYPE).cloned(),
                body: response.body,
                headers: Vec::new(),
                unusable: Vec::new(),
                fields_missing: 0,
            },
            Some(Outcome::Failed(failure)) => {
                let error = failure.http_error();
                let body = json!({"code": error.code, "message": error.message});
                Reply::json(error.status, body.to_string())
            }
            None => Reply::json(500, r#"{"code":"InternalError","message":"no answer"}"#),
        }
    }

    fn reject(&self, rejection: &Rejection) -> Reply {
        let body = json!({"code": rejection.code, "message": rejection.message});
        Reply::json(rejection.kind.status(), body.to_string())
    }

    fn accepts_method(&self, method: &Method) -> bool {
        method == Method::GET
    }

    fn requires_content_type(&self) -> bool {
        false
    }
}
