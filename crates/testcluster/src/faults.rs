//! Faults in front of the real API server: a TCP proxy a client is pointed at
//! (TLS passes through untouched) that can cut every open connection (watches
//! drop), refuse new ones (the API server "flaps"), or delay them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    addr: SocketAddr,
    refuse: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    cut: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 and forwards to `upstream`, on the current runtime.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let refuse = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let (cut, cut_rx) = watch::channel(0u64);
        let (r, d, a, n) = (refuse.clone(), delay_ms.clone(), accepted.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                if r.load(Ordering::SeqCst) {
                    drop(conn);
                    n.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                a.fetch_add(1, Ordering::SeqCst);
                let delay = Duration::from_millis(d.load(Ordering::SeqCst));
                let mut cut_rx = cut_rx.clone();
                cut_rx.borrow_and_update();
                tokio::spawn(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut conn, &mut up) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Ok(FaultProxy {
            addr,
            refuse,
            delay_ms,
            cut,
            accepted,
            refused,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection (watches end mid-stream).
    pub fn cut_connections(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// While set, new connections are closed at once.
    pub fn refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }

    /// New connections wait this long before they reach the API server.
    pub fn delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Connections accepted (and forwarded) so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed at once while refusing.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut_connections();
        self.task.abort();
    }
}

/// A kubeconfig like `kubeconfig` whose server is `proxy` (same CA: the API
/// server's certificate names 127.0.0.1).
pub fn through(kubeconfig: &str, proxy: SocketAddr) -> String {
    let mut v: serde_json::Value = serde_saphyr::from_str(kubeconfig).unwrap_or_default();
    if let Some(clusters) = v.get_mut("clusters").and_then(|c| c.as_array_mut()) {
        for c in clusters {
            if let Some(cluster) = c.get_mut("cluster").and_then(|c| c.as_object_mut()) {
                cluster.insert("server".into(), format!("https://{proxy}").into());
            }
        }
    }
    serde_saphyr::to_string(&v).unwrap_or_default()
}
