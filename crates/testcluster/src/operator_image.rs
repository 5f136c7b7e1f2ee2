//! The operator's own image, made without Docker the way distroless images
//! are: files taken from Debian packages (`apt-get download`, `dpkg-deb -x`),
//! only what the binary needs, and nothing to run but the binary.
//!
//! - base layer: `/etc/passwd` and `/etc/group` with `nonroot` 65532, `/tmp`,
//!   `/home/nonroot`, the CA bundle (the `ca-certificates` package's Mozilla
//!   certificates, concatenated as its `update-ca-certificates` would) and
//!   `/usr/share/zoneinfo` (`tzdata`);
//! - libraries layer: the shared objects the binary names (`ldd`) and the
//!   dynamic loader, from `libc6` and `libgcc-s1`; empty for a static binary;
//! - binary layer: `/distroless-guard`, its debug info stripped (`strip
//!   --strip-debug`: symbol names stay for backtraces).
//!
//! No shell, no package manager, user `65532:65532`, the OCI labels of the
//! Dockerfile, every entry with time 0 and root (or 65532) as owner, in a
//! fixed order: the same binary and packages give the same digest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::oci::{Image, Layer};

/// The image's OCI labels, the same as the Dockerfile's (a test compares
/// them); the version label's value is the version given to [`build`].
pub const LABELS: &[(&str, &str)] = &[
    (
        "org.opencontainers.image.source",
        "https://github.com/distroless-guard/distroless-guard",
    ),
    (VERSION_LABEL, ""),
    ("org.opencontainers.image.title", "distroless-guard"),
    ("org.opencontainers.image.licenses", "Apache-2.0"),
];
const VERSION_LABEL: &str = "org.opencontainers.image.version";
/// The process of both images: user, entrypoint, command.
pub const USER: &str = "65532:65532";
pub const ENTRYPOINT: &[&str] = &["/distroless-guard"];
pub const CMD: &[&str] = &["run"];

/// The Debian packages the image's files come from.
pub const PACKAGES: &[&str] = &["libc6", "libgcc-s1", "ca-certificates", "tzdata"];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Missing(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let command = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| ImageError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(ImageError::Command {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What was built, for a person to read.
#[derive(Debug)]
pub struct Report {
    pub packages: Vec<String>,
    pub libraries: Vec<String>,
    pub binary_bytes: u64,
}

/// The `.deb` files of [`PACKAGES`] in `cache` (downloaded once, kept).
pub fn debs(cache: &Path) -> Result<Vec<PathBuf>, ImageError> {
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let mut found = Vec::new();
    for pkg in PACKAGES {
        let existing = || -> Option<PathBuf> {
            let mut files: Vec<PathBuf> = std::fs::read_dir(cache)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
                })
                .collect();
            files.sort();
            files.pop()
        };
        if let Some(deb) = existing() {
            found.push(deb);
            continue;
        }
        run(Command::new("apt-get")
            .current_dir(cache)
            .args(["-o", "APT::Sandbox::User=root", "download", pkg]))?;
        found.push(existing().ok_or_else(|| {
            ImageError::Missing(format!(
                "apt-get download {pkg} left no {pkg}_*.deb in {}",
                cache.display()
            ))
        })?);
    }
    Ok(found)
}

/// The shared objects `binary` needs, by path on this machine, and its loader.
fn needed(binary: &Path) -> Result<Vec<String>, ImageError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| ImageError::Command {
            command: format!("ldd {}", binary.display()),
            detail: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once(" => ") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect())
}

/// Finds `name` (a library's file name) in the extracted packages.
fn find_in(trees: &[PathBuf], name: &str) -> Option<PathBuf> {
    for t in trees {
        for dir in ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64"] {
            let p = t.join(dir).join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            out.push(p.clone());
            if p.is_dir() && !p.is_symlink() {
                files_under(&p, out);
            }
        }
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n";

/// The image for `binary` (at `version`), its files from the `.deb`s in `debs_cache`.
pub fn build(binary: &Path, version: &str, debs_cache: &Path, work: &Path) -> Result<(Image, Report), ImageError> {
    let debs = debs(debs_cache)?;
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(io(work))?;
    let mut trees = Vec::new();
    for deb in &debs {
        let name = deb
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tree = work.join(name.trim_end_matches(".deb"));
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))?;
        trees.push(tree);
    }

    // Base: users, /tmp, CA bundle, zoneinfo.
    let mut base = Layer::new()
        .dir("etc", 0o755, 0)
        .and_then(|l| l.file("etc/passwd", PASSWD.as_bytes(), 0o644))
        .and_then(|l| l.file("etc/group", GROUP.as_bytes(), 0o644))
        .and_then(|l| l.dir("etc/ssl", 0o755, 0))
        .and_then(|l| l.dir("etc/ssl/certs", 0o755, 0))
        .and_then(|l| l.dir("tmp", 0o1777, 0))
        .and_then(|l| l.dir("home", 0o755, 0))
        .and_then(|l| l.dir("home/nonroot", 0o700, 65532))
        .map_err(io(work))?;
    let ca_tree = trees
        .iter()
        .find(|t| t.to_string_lossy().contains("ca-certificates_"))
        .ok_or_else(|| ImageError::Missing("the ca-certificates package".into()))?;
    let mut certs = Vec::new();
    files_under(&ca_tree.join("usr/share/ca-certificates"), &mut certs);
    let mut bundle = Vec::new();
    for c in certs.iter().filter(|c| c.extension().is_some_and(|e| e == "crt")) {
        bundle.extend(std::fs::read(c).map_err(io(c))?);
    }
    if bundle.is_empty() {
        return Err(ImageError::Missing(format!(
            "no certificates under {}",
            ca_tree.display()
        )));
    }
    base = base
        .file("etc/ssl/certs/ca-certificates.crt", &bundle, 0o644)
        .map_err(io(work))?;
    let tz_tree = trees
        .iter()
        .find(|t| t.to_string_lossy().contains("tzdata_"))
        .ok_or_else(|| ImageError::Missing("the tzdata package".into()))?;
    let zoneinfo = tz_tree.join("usr/share/zoneinfo");
    let mut zones = Vec::new();
    files_under(&zoneinfo, &mut zones);
    base = base
        .dir("usr", 0o755, 0)
        .and_then(|l| l.dir("usr/share", 0o755, 0))
        .and_then(|l| l.dir("usr/share/zoneinfo", 0o755, 0))
        .map_err(io(work))?;
    for z in zones {
        let rel = z.strip_prefix(tz_tree).unwrap_or(&z).to_string_lossy().into_owned();
        base = if z.is_symlink() {
            let target = std::fs::read_link(&z).map_err(io(&z))?;
            base.symlink(&rel, &target.to_string_lossy())
        } else if z.is_dir() {
            base.dir(&rel, 0o755, 0)
        } else {
            base.copy(&rel, &z, 0o644)
        }
        .map_err(io(&z))?;
    }

    // Libraries the binary names, from libc6 and libgcc-s1.
    let mut names = BTreeSet::new();
    for path in needed(binary)? {
        if let Some(name) = Path::new(&path).file_name() {
            names.insert(name.to_string_lossy().into_owned());
        }
    }
    let libraries: Vec<String> = names.into_iter().collect();
    let mut libs = Layer::new()
        .dir("lib", 0o755, 0)
        .and_then(|l| l.dir("lib/x86_64-linux-gnu", 0o755, 0))
        .map_err(io(work))?;
    for name in &libraries {
        let from = find_in(&trees, name).ok_or_else(|| {
            ImageError::Missing(format!(
                "{name} (needed by {}) is in none of {PACKAGES:?}",
                binary.display()
            ))
        })?;
        let real = std::fs::canonicalize(&from).map_err(io(&from))?;
        libs = libs
            .copy(&format!("lib/x86_64-linux-gnu/{name}"), &real, 0o755)
            .map_err(io(&real))?;
    }
    if libraries.iter().any(|l| l == "ld-linux-x86-64.so.2") {
        libs = libs
            .dir("lib64", 0o755, 0)
            .and_then(|l| {
                l.symlink(
                    "lib64/ld-linux-x86-64.so.2",
                    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                )
            })
            .map_err(io(work))?;
    }

    // The binary, without its debug info.
    let stripped = work.join("distroless-guard");
    std::fs::copy(binary, &stripped).map_err(io(binary))?;
    run(Command::new("strip").arg("--strip-debug").arg(&stripped))?;
    let binary_bytes = std::fs::metadata(&stripped).map_err(io(&stripped))?.len();
    let app = Layer::new()
        .copy("distroless-guard", &stripped, 0o755)
        .map_err(io(&stripped))?;

    let mut layers = vec![base.finish().map_err(io(work))?];
    if !libraries.is_empty() {
        layers.push(libs.finish().map_err(io(work))?);
    }
    layers.push(app.finish().map_err(io(work))?);
    let packages = debs
        .iter()
        .filter_map(|d| {
            d.file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".deb").to_string())
        })
        .collect();
    let image = Image {
        layers,
        user: Some(USER.into()),
        entrypoint: ENTRYPOINT.iter().map(|s| s.to_string()).collect(),
        cmd: CMD.iter().map(|s| s.to_string()).collect(),
        env: vec![
            "PATH=/".into(),
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".into(),
        ],
        labels: LABELS
            .iter()
            .map(|(k, v)| (k.to_string(), if *k == VERSION_LABEL { version } else { v }.to_string()))
            .collect(),
    };
    Ok((
        image,
        Report {
            packages,
            libraries,
            binary_bytes,
        },
    ))
}

/// Where the `.deb`s are kept between builds.
pub fn debs_cache() -> PathBuf {
    crate::bins::cache_root().join("debs")
}
