//! Images for real nodes, made without Docker: layers written as tar files
//! entry by entry (fixed times and owners, so the same inputs give the same
//! digest), an OCI config and manifest, and a push over the registry's HTTP
//! API (an upload session closed by a `PUT` of the whole blob, then the
//! manifest) to a plain-HTTP registry on
//! 127.0.0.1, Debian's `docker-registry` (CNCF distribution).
//!
//! Written here rather than with oci-client: the harness pushes to one local
//! registry it starts itself, in three requests per blob, from synchronous
//! start-up code; an async client with auth and redirects would be more code
//! to drive than these 80 lines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A layer built entry by entry; every entry is owned by root unless told.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        Layer { builder }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64, owner: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(owner.into());
        h.set_gid(owner.into());
        h.set_mtime(0);
        h
    }

    /// A regular file with `mode`.
    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> std::io::Result<Self> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64, 0);
        self.builder.append_data(&mut h, path, data)?;
        Ok(self)
    }

    /// A directory with `mode`, owned by `owner` (uid and gid).
    pub fn dir(mut self, path: &str, mode: u32, owner: u32) -> std::io::Result<Self> {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, owner);
        self.builder.append_data(&mut h, path, std::io::empty())?;
        Ok(self)
    }

    pub fn symlink(mut self, path: &str, target: &str) -> std::io::Result<Self> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.builder.append_link(&mut h, path, target)?;
        Ok(self)
    }

    /// A file copied from this machine (a Debian package's binary, say).
    pub fn copy(self, path: &str, from: &Path, mode: u32) -> std::io::Result<Self> {
        let data =
            std::fs::read(from).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", from.display())))?;
        self.file(path, &data, mode)
    }

    /// The uncompressed tar.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        self.builder.into_inner()
    }
}

/// An image: uncompressed layers bottom first, and the config's process fields.
#[derive(Clone, Debug, Default)]
pub struct Image {
    pub layers: Vec<Vec<u8>>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: Vec<(String, String)>,
}

/// An image's blobs, ready to push or to write as an OCI layout.
pub struct Built {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
}

impl Built {
    pub fn digest(&self) -> String {
        digest(&self.manifest)
    }

    /// Compressed size of config and layers.
    pub fn size(&self) -> usize {
        self.config.len() + self.layers.iter().map(Vec::len).sum::<usize>()
    }
}

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

impl Image {
    /// Config and manifest (keys in a fixed order, no timestamps), so the same
    /// layers and fields give the same digest.
    pub fn build(&self) -> Built {
        let diff_ids: Vec<String> = self.layers.iter().map(|l| digest(l)).collect();
        let mut config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let c = &mut config["config"];
        if let Some(user) = &self.user {
            c["User"] = json!(user);
        }
        if !self.entrypoint.is_empty() {
            c["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            c["Cmd"] = json!(self.cmd);
        }
        if !self.env.is_empty() {
            c["Env"] = json!(self.env);
        }
        if !self.labels.is_empty() {
            let labels: serde_json::Map<String, Value> =
                self.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            c["Labels"] = Value::Object(labels);
        }
        let config = serde_json::to_vec(&config).unwrap_or_default();
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| json!({"mediaType": LAYER_TYPE, "digest": digest(l), "size": l.len()}))
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": digest(&config), "size": config.len()},
            "layers": layers,
        }))
        .unwrap_or_default();
        Built {
            config,
            manifest,
            layers: self.layers.clone(),
        }
    }
}

/// Pushes `image` as `<registry>/<repository>:<tag>`; returns the manifest digest.
pub fn push(registry: SocketAddr, repository: &str, tag: &str, image: &Built) -> std::io::Result<String> {
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let d = digest(blob);
        let head = request(registry, "HEAD", &format!("/v2/{repository}/blobs/{d}"), None, &[])?;
        if head.status == 200 {
            continue;
        }
        // An upload session, then the whole blob in its closing PUT.
        let path = format!("/v2/{repository}/blobs/uploads/");
        let reply = request(registry, "POST", &path, None, &[])?;
        let location = reply
            .header("location")
            .filter(|_| reply.status == 202)
            .ok_or_else(|| {
                std::io::Error::other(format!("POST {path} to {registry}: {} {}", reply.status, reply.body))
            })?;
        let location = location.strip_prefix(&format!("http://{registry}")).unwrap_or(location);
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={d}");
        let reply = request(registry, "PUT", &put, Some("application/octet-stream"), blob)?;
        if reply.status != 201 {
            return Err(std::io::Error::other(format!(
                "PUT {put} to {registry}: {} {}",
                reply.status, reply.body
            )));
        }
    }
    let path = format!("/v2/{repository}/manifests/{tag}");
    let reply = request(registry, "PUT", &path, Some(MANIFEST_TYPE), &image.manifest)?;
    if reply.status != 201 {
        return Err(std::io::Error::other(format!(
            "PUT {path} to {registry}: {} {}",
            reply.status, reply.body
        )));
    }
    Ok(image.digest())
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = content_type {
        head += &format!("Content-Type: {t}\r\n");
    }
    head += "\r\n";
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("{method} {path} to {addr}: no HTTP status in the reply")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image {
            layers: vec![
                Layer::new()
                    .dir("tmp", 0o1777, 0)
                    .and_then(|l| l.file("app", b"\x7fELF", 0o755))
                    .and_then(Layer::finish)
                    .unwrap(),
            ],
            user: Some("65532".into()),
            entrypoint: vec!["/app".into()],
            ..Image::default()
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_digest_and_another_user_another() {
        let a = image().build();
        let b = image().build();
        assert_eq!(a.digest(), b.digest());
        let mut root = image();
        root.user = None;
        assert_ne!(a.digest(), root.build().digest());
    }

    #[test]
    fn the_manifest_names_each_layer_by_the_digest_of_its_bytes() {
        let built = image().build();
        let m: Value = serde_json::from_slice(&built.manifest).unwrap();
        assert_eq!(m["layers"][0]["digest"], digest(&built.layers[0]));
        assert_eq!(m["config"]["digest"], digest(&built.config));
        let c: Value = serde_json::from_slice(&built.config).unwrap();
        assert_eq!(c["config"]["User"], "65532");
        assert_eq!(c["rootfs"]["diff_ids"][0], digest(&built.layers[0]));
    }
}

/// The images real-node tests run, all made of one static program
/// ([`crate::bins::TEST_APP`]) so a rollout can move a Deployment between them.
pub mod test_images {
    use super::{Image, Layer};
    use std::path::Path;

    /// Debian's static busybox (package `busybox-static`): the standard image's shell.
    pub const BUSYBOX: &str = "/bin/busybox";

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nnonroot:x:65532:\n";

    fn app_layer(app: &Path) -> std::io::Result<Vec<u8>> {
        Layer::new().copy("app", app, 0o755)?.finish()
    }

    fn base(layer: Layer) -> std::io::Result<Layer> {
        layer
            .dir("etc", 0o755, 0)?
            .file("etc/passwd", PASSWD.as_bytes(), 0o644)?
            .file("etc/group", GROUP.as_bytes(), 0o644)?
            .dir("tmp", 0o1777, 0)?
            .dir("home", 0o755, 0)?
            .dir("home/nonroot", 0o700, 65532)
    }

    /// No shell, no package manager, user 65532: `/app serve` on port 8080.
    pub fn distroless(app: &Path) -> std::io::Result<Image> {
        Ok(Image {
            layers: vec![base(Layer::new())?.finish()?, app_layer(app)?],
            user: Some("65532".into()),
            entrypoint: vec!["/app".into(), "serve".into()],
            ..Image::default()
        })
    }

    /// The same app on a base with a shell (`/bin/sh`), a package manager
    /// (`dpkg`, busybox's applet, with a status file) and no user (root).
    pub fn standard(app: &Path) -> std::io::Result<Image> {
        let mut layer = base(Layer::new())?
            .dir("bin", 0o755, 0)?
            .copy("bin/busybox", Path::new(BUSYBOX), 0o755)?
            .dir("usr", 0o755, 0)?
            .dir("usr/bin", 0o755, 0)?
            .symlink("usr/bin/dpkg", "/bin/busybox")?
            .dir("var", 0o755, 0)?
            .dir("var/lib", 0o755, 0)?
            .dir("var/lib/dpkg", 0o755, 0)?
            .file(
                "var/lib/dpkg/status",
                b"Package: busybox-static\nStatus: install ok installed\nVersion: 1:1.35.0-4\n\n",
                0o644,
            )?
            .dir("root", 0o700, 0)?;
        for applet in ["sh", "ls", "cat", "id", "ps", "touch", "stat", "sleep", "wget"] {
            layer = layer.symlink(&format!("bin/{applet}"), "busybox")?;
        }
        Ok(Image {
            layers: vec![layer.finish()?, app_layer(app)?],
            user: None,
            entrypoint: vec!["/app".into(), "serve".into()],
            ..Image::default()
        })
    }

    /// A debug image in the manner of distroless `:debug`: the standard image's
    /// busybox with a shell as its entrypoint.
    pub fn debug(app: &Path) -> std::io::Result<Image> {
        let mut image = standard(app)?;
        image.entrypoint = vec!["/bin/sh".into()];
        Ok(image)
    }

    /// The pod sandbox image: `/app pause` as 65535.
    pub fn pause(app: &Path) -> std::io::Result<Image> {
        Ok(Image {
            layers: vec![app_layer(app)?],
            user: Some("65535:65535".into()),
            entrypoint: vec!["/app".into(), "pause".into()],
            ..Image::default()
        })
    }
}
