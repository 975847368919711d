//! The OTLP collector of the tracing-cost scenario: rotel-agent from its PyPI wheel.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

use crate::cluster::Otlp;
use crate::{cluster, shared};

/// rotel-agent (the OTLP collector of the tracing scenarios), from deploy/local/tools.sh.
pub(crate) fn rotel_agent() -> anyhow::Result<PathBuf> {
    if let Some(path) = shared::rotel_agent() {
        return Ok(path);
    }
    let out = Command::new("bash")
        .arg(cluster::repo_root().join("deploy/local/tools.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("run deploy/local/tools.sh")?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let path = PathBuf::from(dir).join("rotel-agent");
    if !out.status.success() || !path.exists() {
        bail!(
            "rotel-agent not found: deploy/local/tools.sh fetches it from the PyPI wheel rotel==0.0.1a15"
        );
    }
    Ok(path)
}

/// A collector that receives and discards spans, logging one line per batch.
pub(crate) fn start_collector(out: &Path) -> anyhow::Result<(Child, Otlp)> {
    let grpc = shared::free_port()?;
    let log = std::fs::File::create(out.join("rotel.log"))?;
    let http = shared::free_port()?;
    let child = shared::rotel_command(&rotel_agent()?, grpc, http, "basic", out)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .context("start rotel-agent")?;
    shared::wait_listening(grpc);
    let otlp = Otlp {
        endpoint: format!("http://127.0.0.1:{grpc}"),
        sampling_ratio: 0.0,
    };
    Ok((child, otlp))
}
