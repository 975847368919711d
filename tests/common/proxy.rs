//! A TCP proxy the tests control, between one operator replica and the API server.
//!
//! It forwards bytes as they are (the operator speaks TLS to the API server through it; the
//! server certificate is valid for 127.0.0.1, so only the port in the kubeconfig changes) and
//! can be switched at any time to:
//!
//! - [`Mode::Pass`]: forward everything;
//! - [`Mode::BlackHole`]: a network cut. Nothing is forwarded in either direction: open
//!   connections are held without reading, bytes already read wait, and new connections are
//!   accepted and held without connecting upstream. Nothing is closed, so the client sees
//!   silence, not a reset. When the cut heals, forwarding resumes where it stopped, as TCP
//!   retransmission does after a short partition: a request sent before or during the cut,
//!   even by a client that gave up on it, is delivered late;
//! - [`Mode::Delay`]: every chunk the server sends is written to the client that much later
//!   (added latency, not less throughput: chunks keep their order and are not delayed by each
//!   other).
//!
//! Every forwarded chunk is logged with its direction, size and time, and the chunks a cut
//! held back are counted, so a test can show that late requests really were delivered.
//!
//! The proxy runs on a thread and runtime of its own, so a test blocking its own runtime
//! never stalls the traffic of the operator it is testing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    BlackHole,
    Delay(Duration),
}

/// One forwarded chunk.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    /// Unix time in milliseconds when it was handed to the other side.
    pub at_ms: u64,
    /// Client to server (a request) or server to client (a response).
    pub to_server: bool,
    pub bytes: usize,
}

#[derive(Default)]
struct Counters {
    accepted: u64,
    /// Connections open now, and the most ever open at once: with HTTP/1 each request in
    /// flight holds a connection, so this bounds the requests in flight (plus the watches).
    open: u64,
    max_open: u64,
    /// Chunks that waited out a cut and were forwarded after it.
    late: u64,
}

struct State {
    mode: Mode,
    log: Vec<Chunk>,
    counters: Counters,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Wakes every connection when the mode changes.
    changed: watch::Sender<Mode>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`, in [`Mode::Pass`].
    pub fn start(upstream: SocketAddr) -> Proxy {
        let (changed, _) = watch::channel(Mode::Pass);
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                mode: Mode::Pass,
                log: Vec::new(),
                counters: Counters::default(),
            }),
            changed,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let accept_shared = shared.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(connection(accept_shared.clone(), client));
                }
            });
        });
        let port = rx.recv().expect("proxy started");
        Proxy { port, shared }
    }

    /// The upstream address of a kubeconfig's `server: https://127.0.0.1:PORT`.
    pub fn upstream_of(kubeconfig: &Path) -> SocketAddr {
        let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig readable");
        let server = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .expect("a server in the kubeconfig")
            .trim()
            .trim_matches('"');
        let hostport = server.trim_start_matches("https://").trim_end_matches('/');
        hostport.parse().expect("server is https://IP:PORT")
    }

    /// Writes a copy of `kubeconfig` whose server is this proxy. The API server's certificate
    /// names 127.0.0.1 (see deploy/local/cluster.sh), so TLS verification stays on.
    pub fn kubeconfig(&self, kubeconfig: &Path, out: &Path) {
        let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig readable");
        let upstream = self.shared.upstream;
        let rewritten = text.replace(
            &format!("https://{upstream}"),
            &format!("https://127.0.0.1:{}", self.port),
        );
        assert_ne!(rewritten, text, "the kubeconfig names {upstream}");
        std::fs::write(out, rewritten).expect("write kubeconfig");
    }

    /// Switches the mode; returns the unix time (ms) at which it took effect.
    pub fn set(&self, mode: Mode) -> u64 {
        let mut state = self.shared.lock();
        state.mode = mode;
        let at = unix_ms();
        drop(state);
        self.shared.changed.send_replace(mode);
        at
    }

    pub fn log(&self) -> Vec<Chunk> {
        self.shared.lock().log.clone()
    }

    /// (chunks, bytes) forwarded in one direction at or after `since_ms`.
    pub fn forwarded_since(&self, since_ms: u64, to_server: bool) -> (usize, usize) {
        let state = self.shared.lock();
        state
            .log
            .iter()
            .filter(|c| c.to_server == to_server && c.at_ms >= since_ms)
            .fold((0, 0), |(n, b), c| (n + 1, b + c.bytes))
    }

    /// (connections accepted, chunks forwarded late because of a cut).
    pub fn counters(&self) -> (u64, u64) {
        let s = self.shared.lock();
        (s.counters.accepted, s.counters.late)
    }

    /// (connections open now, most open at once since the last call); resets the maximum.
    pub fn open_connections(&self) -> (u64, u64) {
        let mut s = self.shared.lock();
        let out = (s.counters.open, s.counters.max_open);
        s.counters.max_open = s.counters.open;
        out
    }
}

/// Waits until the cut (if any) heals; whether there was one to wait for.
async fn healed(changed: &mut watch::Receiver<Mode>) -> bool {
    let cut = *changed.borrow_and_update() == Mode::BlackHole;
    let _ = changed.wait_for(|mode| *mode != Mode::BlackHole).await;
    cut
}

async fn connection(shared: Arc<Shared>, client: TcpStream) {
    let mut changed = shared.changed.subscribe();
    {
        let mut state = shared.lock();
        state.counters.accepted += 1;
        state.counters.open += 1;
        state.counters.max_open = state.counters.max_open.max(state.counters.open);
    }
    struct Open(Arc<Shared>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.lock().counters.open -= 1;
        }
    }
    let _open = Open(shared.clone());
    // Accepted during a cut: held, with no upstream connection, until it heals.
    healed(&mut changed).await;
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    tokio::join!(
        pump(shared.clone(), client_r, server_w, true),
        pump(shared.clone(), server_r, client_w, false),
    );
}

/// Copies one direction. Each chunk read is stamped with the time it may be written (now,
/// or now plus the delay for responses) and written in order by a second task. During a
/// cut nothing is read or written; what waits is forwarded when it heals.
async fn pump(
    shared: Arc<Shared>,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    to_server: bool,
) {
    // (when it may be written, the bytes, whether a cut held them back).
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>, bool)>(4096);
    let reader = {
        let shared = shared.clone();
        async move {
            let mut changed = shared.changed.subscribe();
            let mut buf = vec![0u8; 64 * 1024];
            // What is read first after a cut waited in the socket through it.
            let mut held = false;
            loop {
                held |= healed(&mut changed).await;
                let n = tokio::select! {
                    r = from.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
                    _ = changed.wait_for(|mode| *mode == Mode::BlackHole) => continue,
                };
                let mode = shared.lock().mode;
                let at = match mode {
                    Mode::Delay(d) if !to_server => Instant::now() + d,
                    _ => Instant::now(),
                };
                if tx.send((at, buf[..n].to_vec(), held)).await.is_err() {
                    break;
                }
                held = false;
            }
        }
    };
    let writer = async move {
        let mut changed = shared.changed.subscribe();
        while let Some((at, bytes, mut late)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            loop {
                // Logged, then written, under the lock that `set` takes: no chunk is logged
                // (or written) from a cut's time until it heals.
                {
                    let mut state = shared.lock();
                    if state.mode != Mode::BlackHole {
                        if late {
                            state.counters.late += 1;
                        }
                        state.log.push(Chunk {
                            at_ms: unix_ms(),
                            to_server,
                            bytes: bytes.len(),
                        });
                        break;
                    }
                }
                late = true;
                healed(&mut changed).await;
            }
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
