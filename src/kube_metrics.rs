//! A tower layer on the Kubernetes client counting every request by verb, resource and
//! status code, with its latency, watches and lists included.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request, Response};
use tower::{Layer, Service};

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct RequestMetricsLayer {
    metrics: Metrics,
}

impl RequestMetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        RequestMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: Metrics,
}

/// The Kubernetes verb and resource (`services`, `vecodexsets/status`) of a request.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> (String, String) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest: &[&str] = match segments.first() {
        Some(&"api") => segments.get(2..).unwrap_or(&[]),
        Some(&"apis") => segments.get(3..).unwrap_or(&[]),
        _ => return (method.as_str().to_owned(), path.to_owned()),
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest {
        [] => String::new(),
        [r] | [r, _] => (*r).to_owned(),
        [r, _, sub, ..] => format!("{r}/{sub}"),
    };
    let has_name = rest.len() >= 2;
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "WATCH",
        Method::GET if !has_name => "LIST",
        ref m => m.as_str(),
    };
    (verb.to_owned(), resource)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (verb, resource) = classify(req.method(), req.uri().path(), req.uri().query());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let response = self.inner.call(req);
        Box::pin(async move {
            let result = response.await;
            let code = match &result {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_owned(),
            };
            metrics.request(&verb, &resource, &code, started.elapsed());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::classify;

    #[test]
    fn verbs_and_resources() {
        let c = |m: Method, p: &str, q: Option<&str>| classify(&m, p, q);
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/t/services", None),
            ("LIST".into(), "services".into())
        );
        assert_eq!(
            c(
                Method::GET,
                "/api/v1/services",
                Some("watch=true&resourceVersion=1")
            ),
            ("WATCH".into(), "services".into())
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/t/services/s", None),
            ("GET".into(), "services".into())
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/apps.vecodex.link/v1alpha1/namespaces/t/vecodexsets/s/status",
                None
            ),
            ("PATCH".into(), "vecodexsets/status".into())
        );
        assert_eq!(
            c(Method::POST, "/api/v1/namespaces", None),
            ("POST".into(), "namespaces".into())
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/t", None),
            ("GET".into(), "namespaces".into())
        );
    }
}
