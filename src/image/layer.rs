//! One layer, read as a tar stream (plain, gzip or zstd), keeping only the
//! entries that can matter: every symlink and hardlink, files whose name is a
//! shell or package manager, package databases, `/etc/passwd`, whiteouts and
//! opaque directories. File contents are never kept, except `/etc/passwd`.

use std::io::{self, Read};

use super::catalog::{PACKAGE_MANAGERS, SHELL_NAMES, package_database};

/// What a layer holds at one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(String),
    /// A hardlink to another path of the same layer.
    Hardlink(String),
}

/// The findings of one layer, independent of every other layer (so they can
/// be cached by layer digest and shared between images).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerFacts {
    /// Kept entries, paths relative to `/` without a leading slash.
    pub entries: Vec<(String, EntryKind)>,
    /// Paths removed from lower layers (`.wh.name`).
    pub whiteouts: Vec<String>,
    /// Directories whose lower-layer content is hidden (`.wh..wh..opq`).
    pub opaque_dirs: Vec<String>,
    /// The content of `etc/passwd`, when this layer has one.
    pub passwd: Option<String>,
    /// Bytes of tar read (uncompressed).
    pub tar_bytes: u64,
}

impl LayerFacts {
    /// Approximate heap size, for cache accounting.
    pub fn weight(&self) -> usize {
        let entries: usize = self
            .entries
            .iter()
            .map(|(p, k)| {
                p.len()
                    + 32
                    + match k {
                        EntryKind::Symlink(t) | EntryKind::Hardlink(t) => t.len(),
                        _ => 0,
                    }
            })
            .sum();
        let lists: usize = self
            .whiteouts
            .iter()
            .chain(&self.opaque_dirs)
            .map(|p| p.len() + 24)
            .sum();
        entries + lists + self.passwd.as_ref().map_or(0, String::len) + 64
    }
}

/// Limits that keep a hostile layer from costing unbounded time or memory.
#[derive(Clone, Copy, Debug)]
pub struct LayerLimits {
    /// Uncompressed tar bytes read from one layer at most.
    pub max_tar_bytes: u64,
    /// Uncompressed bytes per compressed byte at most (decompression bombs),
    /// checked once a layer has produced more than `bomb_floor` bytes.
    pub max_ratio: u64,
    pub bomb_floor: u64,
    /// Entries kept from one layer at most.
    pub max_entries: usize,
    /// Largest `/etc/passwd` read.
    pub max_passwd_bytes: u64,
}

impl Default for LayerLimits {
    fn default() -> Self {
        LayerLimits {
            max_tar_bytes: 4 << 30,
            max_ratio: 100,
            bomb_floor: 64 << 20,
            max_entries: 200_000,
            max_passwd_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer is larger than {limit} bytes uncompressed")]
    TooLarge { limit: u64 },
    #[error("layer expands {ratio}x when decompressed (limit {limit}x): a decompression bomb")]
    Bomb { ratio: u64, limit: u64 },
    #[error("layer has more than {0} entries worth keeping")]
    TooManyEntries(usize),
    #[error("layer is not a readable tar stream: {0}")]
    Corrupt(#[from] io::Error),
}

/// Counts bytes read through it.
struct Counting<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Enforces the size and ratio limits on the decompressed stream.
struct Guarded<R> {
    inner: R,
    read: u64,
    compressed: std::rc::Rc<std::cell::Cell<u64>>,
    limits: LayerLimits,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limits.max_tar_bytes {
            return Err(io::Error::other(LayerError::TooLarge {
                limit: self.limits.max_tar_bytes,
            }));
        }
        let compressed = self.compressed.get().max(1);
        if self.read > self.limits.bomb_floor && self.read / compressed > self.limits.max_ratio {
            return Err(io::Error::other(LayerError::Bomb {
                ratio: self.read / compressed,
                limit: self.limits.max_ratio,
            }));
        }
        Ok(n)
    }
}

fn lift(e: io::Error) -> LayerError {
    if e.get_ref().is_some_and(|inner| inner.is::<LayerError>()) {
        match e.into_inner().map(|inner| inner.downcast::<LayerError>()) {
            Some(Ok(layer)) => *layer,
            Some(Err(other)) => LayerError::Corrupt(io::Error::other(other)),
            None => LayerError::Corrupt(io::Error::other("unknown error")),
        }
    } else {
        LayerError::Corrupt(e)
    }
}

/// Normalizes a tar path: no leading `./` or `/`, no `.` components; `None`
/// for names that climb out of the root (`..`), which are ignored.
pub(super) fn clean_path(raw: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn interesting_file(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    SHELL_NAMES.contains(&base)
        || base == "busybox"
        || PACKAGE_MANAGERS.contains(&base)
        || path == "etc/passwd"
        || package_database(path).is_some()
}

/// Reads a layer blob (compression detected from its first bytes).
pub(super) fn scan(blob: impl Read, limits: LayerLimits) -> Result<LayerFacts, LayerError> {
    let compressed = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let mut counting = io::BufReader::new(Counting {
        inner: blob,
        count: compressed.clone(),
    });
    let magic = {
        use std::io::BufRead;
        counting.fill_buf()?.get(..4).map(<[u8]>::to_vec).unwrap_or_default()
    };
    let decompressed: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(counting))
    } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let decoder = ruzstd::decoding::StreamingDecoder::new(counting)
            .map_err(|e| LayerError::Corrupt(io::Error::other(e.to_string())))?;
        Box::new(decoder)
    } else {
        Box::new(counting)
    };
    let guarded = Guarded {
        inner: decompressed,
        read: 0,
        compressed,
        limits,
    };
    let mut archive = tar::Archive::new(guarded);
    let mut facts = LayerFacts::default();
    for entry in archive.entries().map_err(lift)? {
        let mut entry = entry.map_err(lift)?;
        let raw_path = match entry.path() {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(_) => continue,
        };
        let Some(path) = clean_path(&raw_path) else {
            continue;
        };
        if path.is_empty() {
            continue;
        }
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (d.to_string(), b),
            None => (String::new(), path.as_str()),
        };
        if base == ".wh..wh..opq" {
            facts.opaque_dirs.push(dir);
            continue;
        }
        if let Some(hidden) = base.strip_prefix(".wh.") {
            facts.whiteouts.push(if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            });
            continue;
        }
        let kind = entry.header().entry_type();
        let link = || {
            entry
                .link_name()
                .ok()
                .flatten()
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let kept = if kind.is_symlink() {
            Some(EntryKind::Symlink(link()))
        } else if kind.is_hard_link() {
            clean_path(&link()).map(EntryKind::Hardlink)
        } else if kind.is_dir() {
            None
        } else if (kind.is_file() || kind == tar::EntryType::Continuous) && interesting_file(&path) {
            Some(EntryKind::File)
        } else {
            None
        };
        let Some(kept) = kept else { continue };
        if path == "etc/passwd" && kept == EntryKind::File && entry.size() <= limits.max_passwd_bytes {
            let mut text = String::new();
            if entry
                .by_ref()
                .take(limits.max_passwd_bytes)
                .read_to_string(&mut text)
                .is_ok()
            {
                facts.passwd = Some(text);
            }
        }
        if facts.entries.len() >= limits.max_entries {
            return Err(LayerError::TooManyEntries(limits.max_entries));
        }
        facts.entries.push((path, kept));
    }
    // Drain what follows the end-of-archive marker so the ratio check sees it all.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(lift)?;
    facts.tar_bytes = rest.read;
    Ok(facts)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An in-memory tar: files, symlinks, hardlinks, directories and whiteouts.
    pub(crate) struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        pub(crate) fn new() -> Self {
            Tar(tar::Builder::new(Vec::new()))
        }
        pub(crate) fn file(mut self, path: &str, data: &[u8]) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            self.0.append_data(&mut h, path, data).unwrap();
            self
        }
        pub(crate) fn link(mut self, path: &str, target: &str, kind: tar::EntryType) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }
        pub(crate) fn symlink(self, path: &str, target: &str) -> Self {
            self.link(path, target, tar::EntryType::Symlink)
        }
        pub(crate) fn hardlink(self, path: &str, target: &str) -> Self {
            self.link(path, target, tar::EntryType::Link)
        }
        pub(crate) fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
        pub(crate) fn scan(self) -> LayerFacts {
            scan(self.bytes().as_slice(), LayerLimits::default()).unwrap()
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn only_what_the_verdict_needs_is_kept_and_whiteouts_are_read() {
        let facts = Tar::new()
            .file("usr/bin/bash", b"ELF")
            .file("usr/share/doc/README", b"text")
            .file("etc/passwd", b"nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n")
            .symlink("bin", "usr/bin")
            .hardlink("usr/bin/rbash", "usr/bin/bash")
            .file("opt/.wh.tool", b"")
            .file("var/cache/.wh..wh..opq", b"")
            .scan();
        let paths: Vec<&str> = facts.entries.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"usr/bin/bash") && paths.contains(&"bin") && paths.contains(&"etc/passwd"));
        assert!(
            !paths.contains(&"usr/share/doc/README"),
            "irrelevant files are not kept"
        );
        assert!(
            facts
                .entries
                .contains(&("usr/bin/rbash".into(), EntryKind::Hardlink("usr/bin/bash".into())))
        );
        assert_eq!(facts.whiteouts, ["opt/tool"]);
        assert_eq!(facts.opaque_dirs, ["var/cache"]);
        assert!(facts.passwd.as_deref().unwrap().contains("65532"));
        assert_eq!(
            clean_path("../etc/passwd"),
            None,
            "a path with .. is ignored, never followed"
        );
        assert_eq!(clean_path("./usr//bin/sh").as_deref(), Some("usr/bin/sh"));
    }

    #[test]
    fn gzip_layers_are_read_and_bombs_and_garbage_are_refused() {
        let tar = Tar::new().file("bin/sh", b"ELF").bytes();
        let facts = scan(gzip(&tar).as_slice(), LayerLimits::default()).unwrap();
        assert_eq!(facts.entries, vec![("bin/sh".into(), EntryKind::File)]);

        // 8 MiB of zeros in one file compress to a few KiB.
        let bomb = Tar::new().file("big", &vec![0u8; 8 << 20]).bytes();
        let limits = LayerLimits {
            max_ratio: 10,
            bomb_floor: 1 << 20,
            ..LayerLimits::default()
        };
        let err = scan(gzip(&bomb).as_slice(), limits).unwrap_err();
        assert!(matches!(err, LayerError::Bomb { .. }), "{err}");

        let err = scan(&b"\x1f\x8bnot really gzip"[..], LayerLimits::default()).unwrap_err();
        assert!(matches!(err, LayerError::Corrupt(_)), "{err}");
    }

    #[test]
    fn a_layer_with_too_many_kept_entries_is_refused() {
        let mut t = Tar::new();
        for i in 0..5 {
            t = t.file(&format!("usr/bin/sh{i}/sh"), b"ELF");
        }
        let limits = LayerLimits {
            max_entries: 3,
            ..LayerLimits::default()
        };
        let err = scan(t.bytes().as_slice(), limits).unwrap_err();
        assert!(matches!(err, LayerError::TooManyEntries(3)), "{err}");
    }
}
