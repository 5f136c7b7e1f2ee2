//! The control-plane binaries: built once from Go modules into a cache outside
//! the clone, keyed by versions and recipe, and found again by the tests.
//!
//! The recipe is the four wrapper modules under `go/` (their `go.mod` and
//! `go.sum` pin every module) plus the build flags below. The cache key is a
//! hash of all of that and of `go version`, so a change to any of them builds
//! into a new directory and an old cache is never half-reused.
//!
//! `DISTROLESS_GUARD_TEST_BINS=DIR` points at binaries a user already has
//! (release tarballs, setup-envtest plus the others); nothing is built then.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Pinned versions (the wrapper modules hold the same).
pub const KUBERNETES: &str = "v1.37.2";
pub const ETCD: &str = "v3.6.16";
pub const KWOK: &str = "v0.8.0";
pub const HELM: &str = "v4.3.1";
pub const CONTAINERD: &str = "v2.4.2";
pub const RUNC: &str = "v1.5.3";
pub const CNI_PLUGINS: &str = "v1.10.0";
pub const CRICTL: &str = "v1.37.0";

/// Bumped whenever the build steps change in a way the files below do not show.
const RECIPE_REVISION: &str = "2";

/// The environment variable naming a directory of ready binaries.
pub const BINS_ENV: &str = "DISTROLESS_GUARD_TEST_BINS";

/// Every file the harness needs in the binaries directory.
pub const FILES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "helm",
    STAGE_CRD,
    // A real node: the kubelet, kube-proxy, containerd and its runc shim, runc,
    // the CNI plugins, crictl (for debugging a node by hand) and the program
    // of the test images (also the pod sandbox's pause process).
    "kubelet",
    "kube-proxy",
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "cni/bridge",
    "cni/host-local",
    "cni/loopback",
    "cni/portmap",
    "crictl",
    TEST_APP,
];

/// The static program of the real-node test images (`crates/testcluster/go/testapp`).
pub const TEST_APP: &str = "dg-testapp";

/// kwok's Stage CRD, copied from the kwok module at build time.
pub const STAGE_CRD: &str = "kwok.x-k8s.io_stages.yaml";

struct Module {
    dir: &'static str,
    go_mod: &'static str,
    go_sum: &'static str,
    packages: &'static [&'static str],
    /// Build tags beyond [`TAGS`].
    tags: &'static str,
    /// runc links libseccomp (Debian's `libseccomp-dev`), so it needs cgo.
    cgo: bool,
    /// A subdirectory of the cache entry for the binaries (the CNI plugins).
    out: &'static str,
    /// Go source files of our own (the test app), hashed into the key.
    sources: &'static [(&'static str, &'static str)],
}

const PLAIN: Module = Module {
    dir: "",
    go_mod: "",
    go_sum: "",
    packages: &[],
    tags: "",
    cgo: false,
    out: "",
    sources: &[],
};

const MODULES: &[Module] = &[
    Module {
        dir: "k8s",
        go_mod: include_str!("../go/k8s/go.mod"),
        go_sum: include_str!("../go/k8s/go.sum"),
        packages: &[
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-scheduler",
            "k8s.io/kubernetes/cmd/kubectl",
            "k8s.io/kubernetes/cmd/kubelet",
            "k8s.io/kubernetes/cmd/kube-proxy",
        ],
        ..PLAIN
    },
    Module {
        dir: "etcd",
        go_mod: include_str!("../go/etcd/go.mod"),
        go_sum: include_str!("../go/etcd/go.sum"),
        packages: &["go.etcd.io/etcd/server/v3"],
        ..PLAIN
    },
    Module {
        dir: "kwok",
        go_mod: include_str!("../go/kwok/go.mod"),
        go_sum: include_str!("../go/kwok/go.sum"),
        packages: &["sigs.k8s.io/kwok/cmd/kwok"],
        ..PLAIN
    },
    Module {
        dir: "helm",
        go_mod: include_str!("../go/helm/go.mod"),
        go_sum: include_str!("../go/helm/go.sum"),
        packages: &["helm.sh/helm/v4/cmd/helm"],
        ..PLAIN
    },
    Module {
        dir: "containerd",
        go_mod: include_str!("../go/containerd/go.mod"),
        go_sum: include_str!("../go/containerd/go.sum"),
        packages: &[
            "github.com/containerd/containerd/v2/cmd/containerd",
            "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
        ],
        // The snapshotters that need cgo or kernel support we do not use; overlayfs stays.
        tags: "no_btrfs,no_devmapper,no_zfs",
        ..PLAIN
    },
    Module {
        dir: "runc",
        go_mod: include_str!("../go/runc/go.mod"),
        go_sum: include_str!("../go/runc/go.sum"),
        packages: &["github.com/opencontainers/runc"],
        tags: "seccomp",
        cgo: true,
        ..PLAIN
    },
    Module {
        dir: "cni",
        go_mod: include_str!("../go/cni/go.mod"),
        go_sum: include_str!("../go/cni/go.sum"),
        packages: &[
            "github.com/containernetworking/plugins/plugins/main/bridge",
            "github.com/containernetworking/plugins/plugins/ipam/host-local",
            "github.com/containernetworking/plugins/plugins/main/loopback",
            "github.com/containernetworking/plugins/plugins/meta/portmap",
        ],
        out: "cni",
        ..PLAIN
    },
    Module {
        dir: "crictl",
        go_mod: include_str!("../go/crictl/go.mod"),
        go_sum: include_str!("../go/crictl/go.sum"),
        packages: &["sigs.k8s.io/cri-tools/cmd/crictl"],
        ..PLAIN
    },
    Module {
        dir: "testapp",
        go_mod: include_str!("../go/testapp/go.mod"),
        go_sum: "",
        packages: &["."],
        sources: &[("main.go", include_str!("../go/testapp/main.go"))],
        ..PLAIN
    },
];

#[derive(Debug, thiserror::Error)]
pub enum BinsError {
    #[error(
        "the control-plane binaries are not built ({missing} missing in {dir}); build them once with \
         `cargo xtask bins` (15 to 25 minutes on 2 cores the first time, cached afterwards), \
         or point {BINS_ENV} at a directory holding {files}"
    )]
    NotBuilt {
        dir: PathBuf,
        missing: String,
        files: String,
    },
    #[error("{BINS_ENV}={dir}: {missing} missing there; the directory must hold {files}")]
    Incomplete {
        dir: PathBuf,
        missing: String,
        files: String,
    },
    #[error("cannot run `go` ({0}); Go 1.26 is needed to build the control-plane binaries and the peers")]
    NoGo(String),
    #[error("{step} failed: {detail}")]
    Build { step: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An I/O error on `path`, naming it.
fn at(path: &Path) -> impl FnOnce(std::io::Error) -> BinsError + '_ {
    move |source| BinsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory holding every file in [`FILES`].
#[derive(Clone, Debug)]
pub struct Bins {
    dir: PathBuf,
}

impl Bins {
    /// The binaries from `DISTROLESS_GUARD_TEST_BINS`, or the cache entry for this recipe.
    pub fn locate() -> Result<Bins, BinsError> {
        if let Some(dir) = std::env::var_os(BINS_ENV) {
            let dir = PathBuf::from(dir);
            return match missing_in(&dir) {
                None => Ok(Bins { dir }),
                Some(missing) => Err(BinsError::Incomplete {
                    dir,
                    missing,
                    files: FILES.join(", "),
                }),
            };
        }
        let dir = cache_dir()?;
        match missing_in(&dir) {
            None => Ok(Bins { dir }),
            Some(missing) => Err(BinsError::NotBuilt {
                dir,
                missing,
                files: FILES.join(", "),
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one of [`FILES`].
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn missing_in(dir: &Path) -> Option<String> {
    let missing: Vec<&str> = FILES.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Where cache entries live: `$DISTROLESS_GUARD_CACHE`, else
/// `$XDG_CACHE_HOME/distroless-guard`, else `~/.cache/distroless-guard`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("DISTROLESS_GUARD_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("distroless-guard")
}

/// The cache entry for this recipe and this Go.
pub fn cache_dir() -> Result<PathBuf, BinsError> {
    Ok(cache_root().join("control-plane").join(key(&go_version()?)))
}

fn go_version() -> Result<String, BinsError> {
    let out = go()
        .arg("version")
        .output()
        .map_err(|e| BinsError::NoGo(e.to_string()))?;
    if !out.status.success() {
        return Err(BinsError::NoGo(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Versions, a short hash of the recipe and Go: `k8s-v1.37.2_etcd-v3.6.16_..._<hash>`.
pub fn key(go_version: &str) -> String {
    let mut h = Sha256::new();
    for m in MODULES {
        h.update(m.dir);
        h.update(m.go_mod);
        h.update(m.go_sum);
        for p in m.packages {
            h.update(p);
        }
        for (name, text) in m.sources {
            h.update(name);
            h.update(text);
        }
        h.update(m.tags);
        h.update([u8::from(m.cgo)]);
        h.update(m.out);
        h.update(ldflags(m.dir));
    }
    h.update(RECIPE_REVISION);
    h.update(go_version);
    h.update(TAGS);
    let hash = hex::encode(h.finalize());
    format!("k8s-{KUBERNETES}_etcd-{ETCD}_kwok-{KWOK}_helm-{HELM}_{}", &hash[..12])
}

const TAGS: &str = "notest,grpcnotrace";

fn ldflags(module: &str) -> String {
    let mut f = String::from("-s -w");
    match module {
        "k8s" => {
            let minor = KUBERNETES.split('.').nth(1).unwrap_or_default();
            for p in ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"] {
                f += &format!(
                    " -X {p}.gitVersion={KUBERNETES} -X {p}.gitMajor=1 -X {p}.gitMinor={minor} \
                     -X {p}.gitTreeState=clean -X {p}.buildDate=1970-01-01T00:00:00Z"
                );
            }
        }
        "etcd" => f += &format!(" -X go.etcd.io/etcd/api/v3/version.GitSHA={ETCD}"),
        "helm" => f += &format!(" -X helm.sh/helm/v4/internal/version.version={HELM}"),
        _ => {}
    }
    f
}

/// `go` as every build here runs it: the installed Go, no cgo, read-only
/// go.mod files, a module cache that can be deleted.
pub fn go() -> Command {
    let mut cmd = Command::new("go");
    // The Go that is installed, not one a go.mod line would download.
    cmd.env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=readonly -modcacherw -buildvcs=false");
    cmd
}

/// What `build` reports: where the binaries are and how long it took.
pub struct Built {
    pub bins: Bins,
    pub seconds: f64,
    pub cached: bool,
}

/// Builds every binary into the cache entry unless it is already complete.
/// Builds into `<entry>.tmp` and renames, so an interrupted build is never found.
pub fn build(source: &Path, log: &mut dyn FnMut(&str)) -> Result<Built, BinsError> {
    let started = Instant::now();
    if std::env::var_os(BINS_ENV).is_some() {
        return Ok(Built {
            bins: Bins::locate()?,
            seconds: 0.0,
            cached: true,
        });
    }
    let dir = cache_dir()?;
    if missing_in(&dir).is_none() {
        return Ok(Built {
            bins: Bins { dir },
            seconds: 0.0,
            cached: true,
        });
    }
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(at(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(at(&tmp))?;
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    for m in MODULES {
        let step = format!("go build of {}", m.packages.join(" "));
        log(&format!("building {} (go build -p {jobs})", m.packages.join(", ")));
        let t = Instant::now();
        let out = tmp.join(m.out);
        std::fs::create_dir_all(&out).map_err(at(&out))?;
        let tags = if m.tags.is_empty() {
            TAGS.to_string()
        } else {
            format!("{TAGS},{}", m.tags)
        };
        let mut cmd = go();
        cmd.current_dir(source.join(m.dir))
            .env("CGO_ENABLED", if m.cgo { "1" } else { "0" })
            .arg("build")
            .arg(format!("-p={jobs}"))
            .arg("-trimpath")
            .arg(format!("-tags={tags}"))
            .arg(format!("-ldflags={}", ldflags(m.dir)))
            .arg("-o")
            .arg(format!("{}/", out.display()))
            .args(m.packages);
        run(&mut cmd, &step)?;
        log(&format!("  done in {:.0} s", t.elapsed().as_secs_f64()));
    }
    // go build names etcd's main package (go.etcd.io/etcd/server/v3) after "server".
    for name in ["server", "v3"] {
        if tmp.join(name).is_file() {
            std::fs::rename(tmp.join(name), tmp.join("etcd")).map_err(at(&tmp.join(name)))?;
        }
    }
    if tmp.join("testapp").is_file() {
        std::fs::rename(tmp.join("testapp"), tmp.join(TEST_APP)).map_err(at(&tmp.join("testapp")))?;
    }
    let kwok_dir = module_dir(source, "kwok", &format!("sigs.k8s.io/kwok@{KWOK}"))?;
    let crd = kwok_dir.join("kustomize/crd/bases").join(STAGE_CRD);
    std::fs::copy(&crd, tmp.join(STAGE_CRD)).map_err(at(&crd))?;
    if let Some(missing) = missing_in(&tmp) {
        return Err(BinsError::Build {
            step: "the build".into(),
            detail: format!("{missing} not produced in {}", tmp.display()),
        });
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(at(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(at(&dir))?;
    Ok(Built {
        bins: Bins { dir },
        seconds: started.elapsed().as_secs_f64(),
        cached: false,
    })
}

/// The directory of a downloaded module, as `go mod download -json` reports it.
fn module_dir(source: &Path, module: &str, at: &str) -> Result<PathBuf, BinsError> {
    download(&source.join(module), at)
}

/// Downloads `module@version` (run in `dir`) and returns where the module
/// cache holds it.
pub fn download(dir: &Path, at: &str) -> Result<PathBuf, BinsError> {
    let mut cmd = go();
    cmd.current_dir(dir).args(["mod", "download", "-json", at]);
    let out = run(&mut cmd, &format!("go mod download {at}"))?;
    let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| BinsError::Build {
        step: format!("go mod download {at}"),
        detail: e.to_string(),
    })?;
    v["Dir"].as_str().map(PathBuf::from).ok_or_else(|| BinsError::Build {
        step: format!("go mod download {at}"),
        detail: format!("no Dir in {v}"),
    })
}

/// Runs `cmd`; its output, or the last 30 lines of its errors.
pub fn run(cmd: &mut Command, step: &str) -> Result<Vec<u8>, BinsError> {
    let out = cmd.output().map_err(|e| BinsError::NoGo(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        return Err(BinsError::Build {
            step: step.to_string(),
            detail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_names_the_versions_and_changes_with_go() {
        let a = key("go version go1.26.8 linux/amd64");
        let b = key("go version go1.26.9 linux/amd64");
        assert!(
            a.starts_with("k8s-v1.37.2_etcd-v3.6.16_kwok-v0.8.0_helm-v4.3.1_"),
            "{a}"
        );
        assert_ne!(a, b);
        assert_eq!(a, key("go version go1.26.8 linux/amd64"));
    }

    #[test]
    fn the_kubernetes_binaries_are_stamped_with_their_version() {
        let f = ldflags("k8s");
        assert!(f.contains("k8s.io/component-base/version.gitVersion=v1.37.2"), "{f}");
        assert!(f.contains("k8s.io/client-go/pkg/version.gitMinor=37"), "{f}");
    }

    #[test]
    fn the_wrapper_modules_pin_the_versions_named_here() {
        let find = |dir: &str, needle: &str| {
            MODULES
                .iter()
                .find(|m| m.dir == dir)
                .is_some_and(|m| m.go_mod.contains(needle))
        };
        assert!(find("k8s", &format!("k8s.io/kubernetes {KUBERNETES}")));
        assert!(find("etcd", &format!("go.etcd.io/etcd/server/v3 {ETCD}")));
        assert!(find("kwok", &format!("sigs.k8s.io/kwok {KWOK}")));
        assert!(find("helm", &format!("helm.sh/helm/v4 {HELM}")));
    }
}
