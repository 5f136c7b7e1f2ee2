//! The cluster network, as the API server sees it: its egress selector sends
//! every connection to a Service's endpoint (webhooks with `service:`
//! references, with `--enable-aggregator-routing`) as an HTTP CONNECT over a
//! Unix socket. This proxy plays kube-proxy and the pod network: a pod IP and
//! port map to a process on 127.0.0.1. Addresses of real nodes (the node and
//! its pods, on a bridge of this machine) are connected to directly. Anything
//! else gets a 503, which the API server reports as the webhook being
//! unreachable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// One CONNECT the API server made, and where it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub target: String,
    pub routed_to: Option<SocketAddr>,
}

#[derive(Default)]
struct State {
    routes: HashMap<SocketAddr, SocketAddr>,
    /// Real nodes' subnets (`10.245.k.0/24`): network address and prefix length.
    direct: Vec<(std::net::Ipv4Addr, u8)>,
    log: Vec<Connect>,
}

impl State {
    /// Where a CONNECT to `target` goes: a routed local process, or the address
    /// itself when it is in a real node's subnet.
    fn destination(&self, target: SocketAddr) -> Option<SocketAddr> {
        if let Some(local) = self.routes.get(&target) {
            return Some(*local);
        }
        let std::net::IpAddr::V4(ip) = target.ip() else {
            return None;
        };
        self.direct
            .iter()
            .any(|(net, len)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(*net) & mask
            })
            .then_some(target)
    }
}

/// The route table; cheap to clone.
#[derive(Clone, Default)]
pub struct Egress {
    state: Arc<Mutex<State>>,
    socket: Arc<PathBuf>,
}

impl Egress {
    /// Binds `socket` and serves CONNECTs on the current runtime.
    pub fn start(socket: &Path) -> std::io::Result<Egress> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let egress = Egress {
            state: Arc::default(),
            socket: Arc::new(socket.to_path_buf()),
        };
        let serving = egress.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let egress = serving.clone();
                tokio::spawn(async move {
                    let _ = egress.serve(conn).await;
                });
            }
        });
        Ok(egress)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connections to `pod` (a pod IP and port) now reach `local`.
    pub fn route(&self, pod: SocketAddr, local: SocketAddr) {
        self.lock().routes.insert(pod, local);
    }

    /// Connections into `net/len` (a real node's subnet) go straight there.
    pub fn allow_direct(&self, net: std::net::Ipv4Addr, len: u8) {
        self.lock().direct.push((net, len.min(32)));
    }

    pub fn unroute(&self, pod: SocketAddr) {
        self.lock().routes.remove(&pod);
    }

    /// Every CONNECT so far, oldest first.
    pub fn connects(&self) -> Vec<Connect> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn serve(&self, conn: UnixStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let target = parse_connect(&line);
        // The rest of the request head, up to the blank line.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 || header == "\r\n" || header == "\n" {
                break;
            }
        }
        let Some(target) = target else {
            reader.get_mut().write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await?;
            return Ok(());
        };
        let routed = target
            .parse::<SocketAddr>()
            .ok()
            .and_then(|t| self.lock().destination(t));
        self.lock().log.push(Connect {
            target: target.clone(),
            routed_to: routed,
        });
        let Some(local) = routed else {
            let body = format!("no route to {target} in the test cluster network");
            let reply = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            reader.get_mut().write_all(reply.as_bytes()).await?;
            return Ok(());
        };
        let mut upstream = match TcpStream::connect(local).await {
            Ok(s) => s,
            Err(e) => {
                let body = format!("{target} -> {local}: {e}");
                let reply = format!(
                    "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                reader.get_mut().write_all(reply.as_bytes()).await?;
                return Ok(());
            }
        };
        reader
            .get_mut()
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        // The client speaks first (TLS), so nothing is buffered past the head.
        let mut conn = reader.into_inner();
        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
        Ok(())
    }
}

/// `CONNECT host:port HTTP/1.1` → `host:port`.
fn parse_connect(line: &str) -> Option<String> {
    let mut parts = line.split_whitespace();
    (parts.next()? == "CONNECT").then_some(())?;
    let target = parts.next()?;
    parts.next()?.starts_with("HTTP/1.").then(|| target.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(
            parse_connect("CONNECT 10.244.0.5:8443 HTTP/1.1\r\n").as_deref(),
            Some("10.244.0.5:8443")
        );
        assert_eq!(parse_connect("GET / HTTP/1.1\r\n"), None);
        assert_eq!(parse_connect("CONNECT 10.0.0.1:1\r\n"), None);
        assert_eq!(parse_connect(""), None);
    }

    #[test]
    fn addresses_in_a_direct_subnet_go_straight_there_and_others_nowhere() {
        let mut state = State::default();
        state.direct.push(("10.245.3.0".parse().unwrap(), 24));
        let inside: SocketAddr = "10.245.3.17:8443".parse().unwrap();
        assert_eq!(state.destination(inside), Some(inside));
        assert_eq!(state.destination("10.245.4.17:8443".parse().unwrap()), None);
        assert_eq!(state.destination("192.0.2.1:443".parse().unwrap()), None);
    }

    #[tokio::test]
    async fn a_routed_pod_address_reaches_the_local_process_and_others_get_503() {
        let dir = std::env::temp_dir().join(format!("egress-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let egress = Egress::start(&dir.join("egress.sock")).unwrap();
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let pod: SocketAddr = "10.244.0.7:8443".parse().unwrap();
        egress.route(pod, local);

        let mut c = UnixStream::connect(egress.socket()).await.unwrap();
        c.write_all(b"CONNECT 10.244.0.7:8443 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut head = vec![0u8; 39];
        c.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200 Connection established\r\n\r\n");
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");

        let mut c = UnixStream::connect(egress.socket()).await.unwrap();
        c.write_all(b"CONNECT 10.244.9.9:443 HTTP/1.1\r\n\r\n").await.unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        assert_eq!(
            egress.connects(),
            [
                Connect {
                    target: "10.244.0.7:8443".into(),
                    routed_to: Some(local)
                },
                Connect {
                    target: "10.244.9.9:443".into(),
                    routed_to: None
                },
            ]
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
