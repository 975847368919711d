//! Logging and tracing: structured logs (text or JSON) and one OpenTelemetry trace per
//! reconcile, exported over OTLP/gRPC.
//!
//! Export never slows reconciles: finished spans go into a bounded queue (`try_send`; a full
//! queue drops the span and counts it), and one task sends them in batches with a timeout. A
//! collector that is down or slow only makes that task drop batches, which are counted too.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Metadata;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt, FilterFn};
use tracing_subscriber::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where and how traces go; every field has its standard `OTEL_*` variable.
#[derive(Debug, Clone, Default)]
pub struct TraceConfig {
    /// OTLP/gRPC endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`); none: no exporter.
    pub endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: String,
    /// `OTEL_TRACES_SAMPLER`: always_on, always_off, traceidratio, parentbased_always_on,
    /// parentbased_always_off, parentbased_traceidratio.
    pub sampler: String,
    /// `OTEL_TRACES_SAMPLER_ARG`: the ratio for the ratio samplers.
    pub sampler_arg: Option<f64>,
    /// `service.instance.id`: the pod name.
    pub instance_id: String,
}

/// Spans waiting for export at most; beyond that they are dropped and counted.
const QUEUE: usize = 4096;
const BATCH: usize = 512;
const BATCH_DELAY: Duration = Duration::from_millis(500);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Hands finished, sampled spans to the export task without ever waiting.
#[derive(Debug)]
struct BoundedExport {
    tx: mpsc::Sender<SpanData>,
    dropped: Counter,
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // The export task flushes when the provider (and so this sender) is dropped.
        Ok(())
    }
}

async fn export_loop(
    mut rx: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    exported: Counter,
    dropped: Counter,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut closed = false;
    loop {
        let first = tokio::select! {
            span = rx.recv() => span,
            // The tracer lives as long as the global subscriber, so the queue is closed
            // explicitly; what is already in it is still sent.
            _ = stop.cancelled(), if !closed => {
                rx.close();
                closed = true;
                continue;
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(std::mem::take(&mut batch)))
            .await
        {
            Ok(Ok(())) => {
                exported.inc_by(n);
            }
            Ok(Err(e)) => {
                dropped.inc_by(n);
                tracing::debug!(error = %e, spans = n, "span export failed; dropped");
            }
            Err(_) => {
                dropped.inc_by(n);
                tracing::debug!(spans = n, "span export timed out; dropped");
            }
        }
    }
}

fn sampler(config: &TraceConfig) -> Sampler {
    let ratio = config.sampler_arg.unwrap_or(1.0).clamp(0.0, 1.0);
    match config.sampler.as_str() {
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        _ => Sampler::AlwaysOn,
    }
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes what it can.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    exporter: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Telemetry {
    /// Drops the provider (closing the span queue) and waits up to `timeout` for the export
    /// task to send what is queued. Never panics.
    pub async fn shutdown(mut self, timeout: Duration) {
        self.stop.cancel();
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown_with_timeout(timeout);
        }
        if let Some(task) = self.exporter.take()
            && tokio::time::timeout(timeout, task).await.is_err()
        {
            eprintln!("trace export did not finish within {timeout:?}; remaining spans dropped");
        }
    }
}

/// Installs logging and tracing. Must run inside a Tokio runtime (the gRPC exporter and the
/// export task need one). `exported` counts the spans the collector accepted, `dropped` those
/// that were not exported.
pub fn init(
    format: LogFormat,
    level: &str,
    traces: &TraceConfig,
    exported: Counter,
    dropped: Counter,
) -> anyhow::Result<Telemetry> {
    let log_filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));

    let resource = Resource::builder()
        .with_service_name(traces.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", traces.instance_id.clone()),
        ])
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler(traces))
        .with_resource(resource.clone());
    let mut exporter_task = None;
    let stop = CancellationToken::new();
    if let Some(endpoint) = traces.endpoint.as_deref().filter(|e| !e.is_empty()) {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        // The provider hands its resource to processors; ours exports from its own task, so
        // the exporter gets it here.
        exporter.set_resource(&resource);
        let (tx, rx) = mpsc::channel(QUEUE);
        exporter_task = Some(tokio::spawn(export_loop(
            rx,
            exporter,
            exported,
            dropped.clone(),
            stop.clone(),
        )));
        builder = builder.with_span_processor(BoundedExport { tx, dropped });
    }
    // Without an endpoint the provider still makes trace ids, so logs and Events carry them.
    let provider = builder.build();
    let tracer = provider.tracer("vecodex-operator");
    // The log level filters logs only. Traces always have the same shape (the operator's
    // spans, all at info), whatever the log level, so that Warning Events and logs always
    // carry a real trace id.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(FilterFn::new(operator_span));
    // The log layer sees the operator's spans at any log level too, so that a warning
    // logged inside a reconcile still names its trace. (Spans are context for the log
    // lines, never printed themselves.)
    let log_filter = log_filter.or(FilterFn::new(operator_span));

    let registry = tracing_subscriber::registry().with(otel);
    // Logs go to stderr; stdout is kept for command output such as `crd`.
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(std::io::stderr)
                    .with_filter(log_filter),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr)
                    .with_filter(log_filter),
            )
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
    Ok(Telemetry {
        provider: Some(provider),
        exporter: exporter_task,
        stop,
    })
}

/// A span of the operator's own (reconcile, API call, Event), whatever the log level.
fn operator_span(meta: &Metadata<'_>) -> bool {
    meta.is_span()
        && meta.target().starts_with(env!("CARGO_CRATE_NAME"))
        && *meta.level() <= tracing::Level::INFO
}

/// The trace and span id of `span` (hex), for logs, Events and exemplars.
pub fn ids(span: &tracing::Span) -> (String, String) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    (sc.trace_id().to_string(), sc.span_id().to_string())
}
