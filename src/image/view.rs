//! The final filesystem of an image, as far as the verdict needs it: layers
//! merged top-down with whiteouts, opaque directories, symlinks and hardlinks.

use std::collections::{BTreeMap, BTreeSet};

use super::layer::{EntryKind, LayerFacts, clean_path};
use super::{Evidence, PACKAGE_MANAGERS, SHELL_NAMES};

/// Directories a shell or package manager is looked for in.
pub const BIN_DIRS: &[&str] = &[
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "usr/local/bin",
    "usr/local/sbin",
    "busybox",
];

/// The longest chain of symlinks followed.
pub const MAX_SYMLINK_HOPS: usize = 40;

/// Package databases, reported as information: the path to report for a tar path.
pub fn package_database(path: &str) -> Option<&'static str> {
    match path {
        "var/lib/dpkg/status" => Some("/var/lib/dpkg/status"),
        p if p.starts_with("var/lib/dpkg/status.d/") => Some("/var/lib/dpkg/status.d"),
        "lib/apk/db/installed" => Some("/lib/apk/db/installed"),
        p if p.starts_with("var/lib/rpm/") => Some("/var/lib/rpm"),
        p if p.starts_with("usr/lib/sysimage/rpm/") => Some("/usr/lib/sysimage/rpm"),
        _ => None,
    }
}

/// Layers merged: each path's entry and the digest of the layer it comes from.
pub struct MergedView<'a> {
    entries: BTreeMap<&'a str, (&'a EntryKind, &'a str)>,
    passwd: Option<(&'a str, &'a str)>,
}

fn hidden_by(path: &str, prefixes: &BTreeSet<String>, exact_too: bool) -> bool {
    // Any ancestor (or the path itself, for whiteouts) in the set hides it.
    let mut end = path.len();
    loop {
        let candidate = &path[..end];
        if (exact_too || end < path.len()) && prefixes.contains(candidate) {
            return true;
        }
        match candidate.rfind('/') {
            Some(i) => end = i,
            None => return false,
        }
    }
}

impl<'a> MergedView<'a> {
    /// Merges layers given bottom first (manifest order), with their digests.
    pub fn merge(layers: &'a [(String, std::sync::Arc<LayerFacts>)]) -> Self {
        let mut entries: BTreeMap<&str, (&EntryKind, &str)> = BTreeMap::new();
        let mut passwd = None;
        // Paths an upper layer removed (whiteouts; also files replacing a directory).
        let mut removed: BTreeSet<String> = BTreeSet::new();
        // Directories whose lower content an upper layer hid.
        let mut opaque: BTreeSet<String> = BTreeSet::new();
        for (digest, facts) in layers.iter().rev() {
            let visible = |path: &str, removed: &BTreeSet<String>, opaque: &BTreeSet<String>| {
                !hidden_by(path, removed, true) && !hidden_by(path, opaque, false)
            };
            for (path, kind) in &facts.entries {
                if entries.contains_key(path.as_str()) || !visible(path, &removed, &opaque) {
                    continue;
                }
                entries.insert(path.as_str(), (kind, digest.as_str()));
            }
            if let Some(text) = facts.passwd.as_ref().filter(|_| passwd.is_none())
                && visible("etc/passwd", &removed, &opaque)
            {
                passwd = Some((text.as_str(), digest.as_str()));
            }
            // What this layer hides applies to the layers below it only.
            removed.extend(facts.whiteouts.iter().cloned());
            opaque.extend(facts.opaque_dirs.iter().cloned());
            for (path, kind) in &facts.entries {
                if !matches!(kind, EntryKind::Dir) {
                    // A file or link here means nothing below it survives from lower layers.
                    opaque.insert(path.clone());
                }
            }
        }
        MergedView { entries, passwd }
    }

    /// Follows symlinks (in every component) to the entry a path names, if any.
    pub fn resolve(&self, path: &str) -> Option<(String, &'a EntryKind, &'a str)> {
        let mut pending: Vec<String> = path.split('/').filter(|p| !p.is_empty()).map(str::to_string).collect();
        pending.reverse();
        let mut current: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "." => continue,
                ".." => {
                    current.pop();
                    continue;
                }
                _ => {}
            }
            current.push(part);
            let joined = current.join("/");
            if let Some((EntryKind::Symlink(target), _)) = self.entries.get(joined.as_str()) {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return None;
                }
                current.pop();
                if target.starts_with('/') {
                    current.clear();
                }
                for t in target.split('/').rev().filter(|p| !p.is_empty()) {
                    pending.push(t.to_string());
                }
            }
        }
        let joined = clean_path(&current.join("/"))?;
        let &(kind, layer) = self.entries.get(joined.as_str())?;
        Some((joined, kind, layer))
    }

    /// Paths in the bin directories with one of `names` that lead to a file.
    fn programs(&self, names: &[&str]) -> Vec<(String, String, &'a str)> {
        let mut found = Vec::new();
        for (&path, &(kind, layer)) in &self.entries {
            let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
            if !BIN_DIRS.contains(&dir) || !names.contains(&base) {
                continue;
            }
            let leads_to_file = match kind {
                EntryKind::File | EntryKind::Hardlink(_) => true,
                EntryKind::Symlink(_) => {
                    matches!(
                        self.resolve(path),
                        Some((_, EntryKind::File | EntryKind::Hardlink(_), _))
                    )
                }
                EntryKind::Dir => false,
            };
            if leads_to_file {
                found.push((format!("/{path}"), base.to_string(), layer));
            }
        }
        found
    }

    /// Shells (including busybox, whose `sh` applet is a shell).
    pub fn shells(&self) -> Vec<Evidence> {
        let mut names: Vec<&str> = SHELL_NAMES.to_vec();
        names.push("busybox");
        self.programs(&names)
            .into_iter()
            .map(|(path, _, layer)| Evidence {
                path,
                layer: layer.to_string(),
            })
            .collect()
    }

    /// Package managers: their names, and evidence.
    pub fn package_managers(&self) -> (Vec<String>, Vec<Evidence>) {
        let found = self.programs(PACKAGE_MANAGERS);
        let names: BTreeSet<String> = found.iter().map(|(_, n, _)| n.clone()).collect();
        let evidence = found
            .into_iter()
            .map(|(path, _, layer)| Evidence {
                path,
                layer: layer.to_string(),
            })
            .collect();
        (names.into_iter().collect(), evidence)
    }

    /// Package databases present, with evidence.
    pub fn package_databases(&self) -> Vec<Evidence> {
        let mut seen = BTreeMap::new();
        for (&path, &(kind, layer)) in &self.entries {
            if let Some(db) =
                package_database(path).filter(|_| matches!(kind, EntryKind::File | EntryKind::Hardlink(_)))
            {
                seen.entry(db).or_insert(layer);
            }
        }
        seen.into_iter()
            .map(|(path, layer)| Evidence {
                path: path.to_string(),
                layer: layer.to_string(),
            })
            .collect()
    }

    /// The final `/etc/passwd` and the layer it comes from.
    pub fn passwd(&self) -> Option<(&'a str, &'a str)> {
        self.passwd
    }
}

/// The UID of a user name in an `/etc/passwd` text.
pub fn uid_in_passwd(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.next()?;
        fields.next()?.trim().parse().ok()
    })
}
