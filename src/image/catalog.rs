//! What inspection looks for: shells, package managers, package databases,
//! and the directories programs live in. Shared by the layer scanner, the
//! merged view and the engine's shell rule.

/// Programs that are shells.
pub const SHELL_NAMES: &[&str] = &["sh", "bash", "ash", "dash", "zsh", "ksh", "mksh", "hush", "csh", "tcsh"];

/// Programs that install packages.
pub const PACKAGE_MANAGERS: &[&str] = &["apt", "apt-get", "dpkg", "apk", "rpm", "yum", "dnf", "microdnf"];

/// Directories a shell or package manager is looked for in.
pub(crate) const BIN_DIRS: &[&str] = &[
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "usr/local/bin",
    "usr/local/sbin",
    "busybox",
];

/// Package databases, reported as information: the path to report for a tar path.
pub(crate) fn package_database(path: &str) -> Option<&'static str> {
    match path {
        "var/lib/dpkg/status" => Some("/var/lib/dpkg/status"),
        p if p.starts_with("var/lib/dpkg/status.d/") => Some("/var/lib/dpkg/status.d"),
        "lib/apk/db/installed" => Some("/lib/apk/db/installed"),
        p if p.starts_with("var/lib/rpm/") => Some("/var/lib/rpm"),
        p if p.starts_with("usr/lib/sysimage/rpm/") => Some("/usr/lib/sysimage/rpm"),
        _ => None,
    }
}
