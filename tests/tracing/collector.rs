//! The rotel collector the tracing tests export to, and the spans read back from its output.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};

use crate::common;

pub(crate) fn rotel_binary() -> PathBuf {
    common::shared::rotel_agent().expect(
        "rotel-agent not found: run deploy/local/tools.sh (fetches it from the PyPI wheel rotel==0.0.1a15)",
    )
}

pub(crate) fn free_port() -> u16 {
    common::shared::free_port().expect("a free local port")
}

/// A rotel collector printing every span it receives into `out`.
pub(crate) struct Collector {
    pub(crate) child: Child,
    pub(crate) out: PathBuf,
}

impl Collector {
    pub(crate) fn start(grpc: u16, out: PathBuf) -> Collector {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)
            .unwrap();
        let dir = out.parent().unwrap().to_path_buf();
        let child =
            common::shared::rotel_command(&rotel_binary(), grpc, free_port(), "detailed", &dir)
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .stdin(Stdio::null())
                .spawn()
                .expect("start rotel-agent");
        common::shared::wait_listening(grpc);
        Collector { child, out }
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn spans(&self) -> Vec<Span> {
        parse_spans(&std::fs::read_to_string(&self.out).unwrap_or_default())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Span {
    pub(crate) trace_id: String,
    pub(crate) parent_id: String,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) status: String,
    pub(crate) attributes: BTreeMap<String, String>,
}

/// Parses rotel's `--debug-log-verbosity detailed` output.
pub(crate) fn parse_spans(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut current: Option<Span> = None;
    let mut in_attributes = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(Span::default());
            in_attributes = false;
            continue;
        }
        let Some(span) = current.as_mut() else {
            continue;
        };
        if trimmed.starts_with("ResourceSpans #") || trimmed.starts_with("ScopeSpans #") {
            spans.extend(current.take());
            continue;
        }
        let field = |prefix: &str| {
            trimmed
                .strip_prefix(prefix)
                .map(|v| v.trim_start_matches([' ', ':']).trim().to_owned())
        };
        if let Some(v) = field("Trace ID") {
            span.trace_id = v;
        } else if let Some(v) = field("Parent ID") {
            span.parent_id = v;
        } else if let Some(v) = field("ID") {
            span.id = v;
        } else if let Some(v) = field("Name") {
            span.name = v;
        } else if let Some(v) = field("Kind") {
            span.kind = v;
        } else if let Some(v) = field("Status code") {
            span.status = v;
        } else if trimmed == "Attributes:" {
            in_attributes = true;
        } else if trimmed == "Events:" || trimmed.starts_with("SpanEvent") {
            in_attributes = false;
        } else if in_attributes
            && let Some((k, v)) = trimmed
                .strip_prefix("-> ")
                .and_then(|kv| kv.split_once(": "))
        {
            // Str(x) / Int(3)
            let value = v
                .split_once('(')
                .map_or(v, |(_, rest)| rest.strip_suffix(')').unwrap_or(rest));
            span.attributes.insert(k.to_owned(), value.to_owned());
        }
    }
    spans.extend(current);
    spans
}

#[test]
fn rotel_output_parses() {
    let text = "ResourceSpans #0\nScopeSpans #0\nSpan #0\n    Trace ID       : abc\n    Parent ID      : \n    ID             : def\n    Name           : reconcile\n    Kind           : SPAN_KIND_INTERNAL\n    Status code    : STATUS_CODE_ERROR\nAttributes:\n     -> vecodex.outcome: Str(invalid)\n     -> vecodex.attempt: Int(1)\nEvents:\nSpanEvent #0\n     -> Name: x\n";
    let spans = parse_spans(text);
    assert_eq!(spans.len(), 1);
    assert_eq!(
        (
            spans[0].trace_id.as_str(),
            spans[0].id.as_str(),
            spans[0].parent_id.as_str()
        ),
        ("abc", "def", "")
    );
    assert_eq!(spans[0].attributes["vecodex.outcome"], "invalid");
    assert_eq!(spans[0].attributes["vecodex.attempt"], "1");
    assert!(!spans[0].attributes.contains_key("Name"));
}
