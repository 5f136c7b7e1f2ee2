//! The final filesystem of an image, as far as the verdict needs it: layers
//! merged top-down with whiteouts, opaque directories, symlinks and hardlinks.

use std::collections::{BTreeMap, BTreeSet};

use super::Evidence;
use super::catalog::{BIN_DIRS, PACKAGE_MANAGERS, SHELL_NAMES, package_database};
use super::layer::{EntryKind, LayerFacts, clean_path};

/// The longest chain of symlinks followed.
pub(crate) const MAX_SYMLINK_HOPS: usize = 40;

/// Layers merged: each path's entry and the digest of the layer it comes from.
pub(crate) struct MergedView<'a> {
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
    pub(crate) fn merge(layers: &'a [(String, std::sync::Arc<LayerFacts>)]) -> Self {
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
    pub(crate) fn resolve(&self, path: &str) -> Option<(String, &'a EntryKind, &'a str)> {
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
    pub(crate) fn shells(&self) -> Vec<Evidence> {
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
    pub(crate) fn package_managers(&self) -> (Vec<String>, Vec<Evidence>) {
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
    pub(crate) fn package_databases(&self) -> Vec<Evidence> {
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
    pub(crate) fn passwd(&self) -> Option<(&'a str, &'a str)> {
        self.passwd
    }
}

/// The UID of a user name in an `/etc/passwd` text.
pub(crate) fn uid_in_passwd(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.next()?;
        fields.next()?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::image::layer::tests::Tar;

    fn merged(layers: Vec<Tar>) -> Vec<(String, Arc<LayerFacts>)> {
        layers
            .into_iter()
            .enumerate()
            .map(|(i, t)| (format!("sha256:layer{i}"), Arc::new(t.scan())))
            .collect()
    }

    fn paths(e: Vec<Evidence>) -> Vec<String> {
        e.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn a_whiteout_in_an_upper_layer_removes_a_shell_below() {
        let layers = merged(vec![
            Tar::new().file("bin/sh", b"ELF").file("usr/bin/bash", b"ELF"),
            Tar::new().file("bin/.wh.sh", b""),
        ]);
        let view = MergedView::merge(&layers);
        assert_eq!(paths(view.shells()), ["/usr/bin/bash"]);
    }

    #[test]
    fn an_opaque_directory_hides_everything_below_it() {
        let layers = merged(vec![
            Tar::new().file("usr/bin/dash", b"ELF").file("usr/bin/apt", b"ELF"),
            Tar::new().file("usr/bin/.wh..wh..opq", b"").file("usr/bin/app", b"ELF"),
        ]);
        let view = MergedView::merge(&layers);
        assert!(view.shells().is_empty());
        assert!(view.package_managers().0.is_empty());
    }

    #[test]
    fn merged_usr_symlinks_and_busybox_applets_are_followed_and_loops_stop() {
        let layers = merged(vec![
            Tar::new()
                .symlink("bin", "usr/bin")
                .file("busybox/busybox", b"ELF")
                .symlink("usr/bin/sh", "/busybox/busybox")
                .symlink("usr/bin/loop1", "loop2")
                .symlink("usr/bin/loop2", "loop1"),
        ]);
        let view = MergedView::merge(&layers);
        let shells = paths(view.shells());
        assert!(shells.iter().any(|s| s == "/usr/bin/sh"), "{shells:?}");
        assert!(view.resolve("usr/bin/loop1").is_none(), "a loop resolves to nothing");
        assert!(view.resolve("bin/sh").is_some(), "through the merged /usr symlink");
    }

    #[test]
    fn a_hardlink_to_a_removed_target_is_still_a_file() {
        let layers = merged(vec![
            Tar::new()
                .file("usr/bin/dash", b"ELF")
                .hardlink("usr/bin/sh", "usr/bin/dash"),
        ]);
        let view = MergedView::merge(&layers);
        assert!(paths(view.shells()).contains(&"/usr/bin/sh".to_string()));
    }

    #[test]
    fn passwd_comes_from_the_top_most_layer_that_has_it() {
        let layers = merged(vec![
            Tar::new().file("etc/passwd", b"app:x:1000:1000::/:/sbin/nologin\n"),
            Tar::new().file("etc/passwd", b"app:x:65532:65532::/:/sbin/nologin\n"),
        ]);
        let view = MergedView::merge(&layers);
        let (text, layer) = view.passwd().unwrap();
        assert_eq!(uid_in_passwd(text, "app"), Some(65532));
        assert_eq!(layer, "sha256:layer1");
    }
}
