//! Image inspection against a real registry: Debian's `docker-registry` (CNCF
//! distribution) on 127.0.0.1, with images these tests build and push.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::registry::{Blob, Compression, Image, Layer, TestRegistry, push, push_index};
use distroless_guard::image::{ImageError, ImageReport, Inspector, InspectorConfig, LayerLimits, Platform};

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";

fn inspector(registry: &TestRegistry) -> Arc<Inspector> {
    inspector_with(registry, InspectorConfig::default())
}

fn inspector_with(registry: &TestRegistry, config: InspectorConfig) -> Arc<Inspector> {
    Inspector::new(InspectorConfig {
        insecure_registries: vec![registry.host()],
        ..config
    })
    .expect("inspector")
}

fn limited(registry: &TestRegistry, limits: LayerLimits) -> Arc<Inspector> {
    inspector_with(
        registry,
        InspectorConfig {
            layer_limits: limits,
            ..InspectorConfig::default()
        },
    )
}

async fn one(inspector: &Arc<Inspector>, image: &str) -> ImageReport {
    let reports = inspector.inspect(image, &Platform::default(), None).await.unwrap();
    assert_eq!(reports.len(), 1);
    (*reports[0]).clone()
}

fn distroless_base() -> Blob {
    Blob::layer(
        Layer::new()
            .dir("etc")
            .file("etc/passwd", PASSWD)
            .file("etc/group", b"root:x:0:\nnonroot:x:65532:\n")
            .dir("var/lib/dpkg/status.d")
            .file("var/lib/dpkg/status.d/base-files", b"Package: base-files\n")
            .file("etc/ssl/certs/ca-certificates.crt", b"certs")
            .tar(),
        Compression::Gzip,
    )
}

fn app_layer(content: &[u8]) -> Blob {
    Blob::layer(Layer::new().file("app", content).tar(), Compression::Gzip)
}

fn debian_layer(how: Compression) -> Blob {
    Blob::layer(
        Layer::new()
            .symlink("bin", "usr/bin")
            .symlink("sbin", "usr/sbin")
            .dir("usr/bin")
            .file("usr/bin/dash", b"ELF dash")
            .file("usr/bin/bash", b"ELF bash")
            .symlink("usr/bin/sh", "dash")
            .file("usr/bin/apt", b"ELF apt")
            .file("usr/bin/apt-get", b"ELF apt-get")
            .file("usr/bin/dpkg", b"ELF dpkg")
            .file("usr/bin/python3", b"ELF python")
            .file("var/lib/dpkg/status", b"Package: dash\n")
            .file("etc/passwd", PASSWD)
            .tar(),
        how,
    )
}

#[tokio::test]
async fn a_distroless_static_nonroot_image_is_distroless_with_a_numeric_user() {
    let registry = TestRegistry::start();
    let image = registry.image("distroless/app:1");
    push(
        &image,
        &Image::new(vec![distroless_base(), app_layer(b"ELF app")]).user("65532"),
    )
    .await;
    let r = one(&inspector(&registry), &image).await;
    assert!(r.distroless, "{r:?}");
    assert_eq!((r.uid, r.user.as_str()), (Some(65532), "65532"));
    assert!(r.shells.is_empty() && r.package_managers.is_empty());
    assert_eq!(r.package_databases, ["/var/lib/dpkg/status.d"]);
    assert_eq!(r.platform, "linux/amd64");
    assert!(r.digest.starts_with("sha256:"));
    assert_eq!(r.entrypoint, ["/app"], "the config's Entrypoint is read");
}

#[tokio::test]
async fn a_user_name_is_mapped_through_the_image_passwd() {
    let registry = TestRegistry::start();
    let image = registry.image("distroless/named:1");
    let base = distroless_base();
    let base_digest = base.digest();
    push(&image, &Image::new(vec![base, app_layer(b"x")]).user("nonroot:nonroot")).await;
    let r = one(&inspector(&registry), &image).await;
    assert_eq!(r.uid, Some(65532));
    assert!(
        r.evidence
            .iter()
            .any(|e| e.path == "/etc/passwd" && e.layer == base_digest),
        "{:?}",
        r.evidence
    );

    let unknown = registry.image("distroless/unknown-user:1");
    push(&unknown, &Image::new(vec![distroless_base()]).user("ghost")).await;
    assert_eq!(one(&inspector(&registry), &unknown).await.uid, None);
    let root = registry.image("distroless/root:1");
    push(&root, &Image::new(vec![distroless_base()])).await;
    assert!(
        one(&inspector(&registry), &root).await.runs_as_root(),
        "an unset user is root"
    );
}

#[tokio::test]
async fn a_debian_like_merged_usr_image_has_shells_and_package_managers() {
    let registry = TestRegistry::start();
    let image = registry.image("debian/app:12");
    let layer = debian_layer(Compression::Zstd);
    let layer_digest = layer.digest();
    push(&image, &Image::new(vec![layer, app_layer(b"app")])).await;
    let r = one(&inspector(&registry), &image).await;
    assert!(!r.distroless);
    assert_eq!(r.shells, ["/usr/bin/bash", "/usr/bin/dash", "/usr/bin/sh"]);
    assert_eq!(r.package_managers, ["apt", "apt-get", "dpkg"]);
    assert_eq!(r.package_databases, ["/var/lib/dpkg/status"]);
    assert_eq!(r.uid, Some(0));
    assert!(r.evidence.iter().all(|e| e.layer == layer_digest), "{:?}", r.evidence);
}

#[tokio::test]
async fn an_alpine_like_image_with_busybox_hardlinks_and_apk_is_caught_uncompressed() {
    let registry = TestRegistry::start();
    let image = registry.image("alpine/app:3");
    let layer = Layer::new()
        .dir("bin")
        .file("bin/busybox", b"ELF busybox")
        .hardlink("bin/sh", "bin/busybox")
        .hardlink("bin/ls", "bin/busybox")
        .file("sbin/apk", b"ELF apk")
        .file("lib/apk/db/installed", b"P:musl\n")
        .file("etc/passwd", PASSWD)
        .tar();
    push(
        &image,
        &Image::new(vec![Blob::layer(layer, Compression::None)]).user("nobody"),
    )
    .await;
    let r = one(&inspector(&registry), &image).await;
    assert_eq!(r.shells, ["/bin/busybox", "/bin/sh"]);
    assert_eq!(r.package_managers, ["apk"]);
    assert_eq!(r.package_databases, ["/lib/apk/db/installed"]);
    assert_eq!(r.uid, Some(65534));
}

#[tokio::test]
async fn distroless_debug_busybox_shell_is_found() {
    let registry = TestRegistry::start();
    let image = registry.image("distroless/static:debug-nonroot");
    let debug = Layer::new()
        .dir("busybox")
        .file("busybox/busybox", b"ELF busybox")
        .symlink("busybox/sh", "busybox")
        .symlink("busybox/cat", "/busybox/busybox")
        .tar();
    push(
        &image,
        &Image::new(vec![distroless_base(), Blob::layer(debug, Compression::Gzip)]).user("nonroot"),
    )
    .await;
    let r = one(&inspector(&registry), &image).await;
    assert_eq!(r.shells, ["/busybox/busybox", "/busybox/sh"]);
    assert!(!r.distroless);
}

#[tokio::test]
async fn whiteouts_opaque_directories_and_re_added_shells_follow_layer_order() {
    let registry = TestRegistry::start();
    let insp = inspector(&registry);
    let with_sh = || {
        Blob::layer(
            Layer::new()
                .file("bin/sh", b"ELF sh")
                .file("usr/bin/bash", b"ELF bash")
                .tar(),
            Compression::Gzip,
        )
    };

    let removed = registry.image("layers/whiteout:1");
    let whiteout = Blob::layer(
        Layer::new().whiteout("bin/sh").whiteout("usr/bin/bash").tar(),
        Compression::Gzip,
    );
    push(&removed, &Image::new(vec![with_sh(), whiteout.clone()])).await;
    assert!(one(&insp, &removed).await.distroless, "whiteouts remove the shells");

    let opaque = registry.image("layers/opaque:1");
    let opq = Blob::layer(
        Layer::new()
            .opaque("usr/bin")
            .file("usr/bin/app", b"ELF")
            .opaque("bin")
            .tar(),
        Compression::Gzip,
    );
    push(&opaque, &Image::new(vec![with_sh(), opq])).await;
    let r = one(&insp, &opaque).await;
    assert!(
        r.shells.is_empty(),
        "opaque directories hide what is below: {:?}",
        r.shells
    );

    let readded = registry.image("layers/readded:1");
    let again = Blob::layer(Layer::new().file("bin/sh", b"ELF sh again").tar(), Compression::Gzip);
    let again_digest = again.digest();
    push(&readded, &Image::new(vec![with_sh(), whiteout, again])).await;
    let r = one(&insp, &readded).await;
    assert_eq!(r.shells, ["/bin/sh"]);
    assert_eq!(
        r.evidence[0].layer, again_digest,
        "the evidence names the layer that re-added it"
    );
}

#[tokio::test]
async fn a_multi_arch_index_is_judged_per_platform() {
    let registry = TestRegistry::start();
    let image = registry.image("multi/app:1");
    let amd = Image::new(vec![distroless_base(), app_layer(b"amd64")])
        .user("65532")
        .platform("linux", "amd64");
    let arm = Image::new(vec![debian_layer(Compression::Gzip)]).platform("linux", "arm64");
    push_index(&image, &[amd, arm]).await;
    let insp = inspector(&registry);
    let default = one(&insp, &image).await;
    assert!(default.distroless && default.platform == "linux/amd64", "{default:?}");
    let arm = insp
        .inspect(&image, &Platform::One("linux/arm64".into()), None)
        .await
        .unwrap();
    assert!(!arm[0].distroless && arm[0].platform == "linux/arm64");
    let all = insp.inspect(&image, &Platform::All, None).await.unwrap();
    assert_eq!(all.iter().map(|r| r.distroless).collect::<Vec<_>>(), [true, false]);
    let missing = insp
        .inspect(&image, &Platform::One("windows/amd64".into()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, ImageError::NoPlatform { available, .. } if available.contains("linux/arm64")),
        "{missing}"
    );
}

#[tokio::test]
async fn symlink_loops_terminate_and_traversal_names_are_ignored() {
    let registry = TestRegistry::start();
    let image = registry.image("hostile/loop:1");
    let layer = Layer::new()
        .symlink("bin/sh", "sh2")
        .symlink("bin/sh2", "/bin/sh")
        .symlink("usr/bin/bash", "../../usr/bin/bash")
        .raw_file("../../../bin/sh", b"outside the root")
        .tar();
    push(
        &image,
        &Image::new(vec![Blob::layer(layer, Compression::Gzip)]).user("1000"),
    )
    .await;
    let r = one(&inspector(&registry), &image).await;
    assert!(r.shells.is_empty(), "looping links lead nowhere: {:?}", r.shells);
    assert!(r.distroless);
}

#[tokio::test]
async fn a_decompression_bomb_is_stopped_with_a_clear_error() {
    let registry = TestRegistry::start();
    let image = registry.image("hostile/bomb:1");
    let zeros = vec![0u8; 96 << 20];
    push(&image, &Image::new(vec![Blob::layer(zeros, Compression::Gzip)])).await;
    let insp = limited(
        &registry,
        LayerLimits {
            bomb_floor: 8 << 20,
            ..LayerLimits::default()
        },
    );
    let err = insp.inspect(&image, &Platform::default(), None).await.unwrap_err();
    assert!(
        matches!(err, ImageError::Limit { .. }) && err.to_string().contains("decompression bomb"),
        "{err}"
    );

    let big = registry.image("hostile/huge:1");
    let layer = Layer::new().file("blob.bin", &vec![7u8; 4 << 20]).tar();
    push(&big, &Image::new(vec![Blob::layer(layer, Compression::None)])).await;
    let insp = limited(
        &registry,
        LayerLimits {
            max_tar_bytes: 1 << 20,
            ..LayerLimits::default()
        },
    );
    let err = insp.inspect(&big, &Platform::default(), None).await.unwrap_err();
    assert!(err.to_string().contains("larger than 1048576 bytes"), "{err}");
}

#[tokio::test]
async fn a_missing_tag_and_a_down_registry_are_named_errors_and_a_refused_connection_is_not_waited_out() {
    let mut registry = TestRegistry::start();
    let insp = inspector(&registry);
    let err = insp
        .inspect(&registry.image("nothing/here:1"), &Platform::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    let image = registry.image("gone/app:1");
    registry.stop();
    // A refused connection is reported as such, not waited out: the deadline
    // is a minute, the bound (generous, for a busy machine) a sixth of it.
    let started = Instant::now();
    let err = insp
        .inspect(&image, &Platform::default(), Some(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

/// A TCP proxy that waits before forwarding each connection.
async fn slow_proxy(target: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_slow_registry_hits_the_deadline_and_the_inspection_warms_the_cache() {
    let registry = TestRegistry::start();
    let image = registry.image("slow/app:1");
    push(&image, &Image::new(vec![debian_layer(Compression::Gzip)])).await;
    let proxy = slow_proxy(registry.addr, Duration::from_millis(400)).await;
    let via_proxy = format!("{proxy}/slow/app:1");
    let insp = Inspector::new(InspectorConfig {
        insecure_registries: vec![proxy.to_string()],
        ..Default::default()
    })
    .expect("inspector");
    let started = Instant::now();
    let err = insp
        .inspect(&via_proxy, &Platform::default(), Some(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "answered within the deadline: {:?}",
        started.elapsed()
    );
    // The inspection went on in the background; once done, the answer is immediate.
    let mut warmed = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        if let Ok(r) = insp
            .inspect(&via_proxy, &Platform::default(), Some(Duration::from_millis(50)))
            .await
        {
            warmed = Some((r, t.elapsed()));
            break;
        }
    }
    let (reports, took) = warmed.expect("the background inspection never finished");
    assert!(!reports[0].distroless);
    assert!(took < Duration::from_millis(50));
}

#[tokio::test]
async fn concurrent_inspections_share_one_flight_and_rebuilds_reuse_base_layers() {
    let registry = TestRegistry::start();
    let v1 = registry.image("shop/api:1");
    let v2 = registry.image("shop/api:2");
    // A base layer worth caching: half a megabyte that does not compress.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..512 * 1024)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let base = Blob::layer(
        Layer::new()
            .file("usr/lib/libbig.so", &noise)
            .file("bin/sh", b"sh")
            .tar(),
        Compression::Gzip,
    );
    let base_size = base.data.len() as u64;
    push(
        &v1,
        &Image::new(vec![base.clone(), distroless_base(), app_layer(b"v1")]).user("1000"),
    )
    .await;
    push(
        &v2,
        &Image::new(vec![base, distroless_base(), app_layer(b"v2 is different")]).user("1000"),
    )
    .await;

    let alone = inspector(&registry);
    one(&alone, &v1).await;
    let single = alone.bytes_fetched();

    let shared = inspector(&registry);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (insp, image) = (shared.clone(), v1.clone());
            tokio::spawn(async move { insp.inspect(&image, &Platform::default(), None).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert!(!t.await.unwrap()[0].distroless);
    }
    assert_eq!(
        shared.bytes_fetched(),
        single,
        "eight concurrent inspections fetch what one does"
    );

    let before = shared.bytes_fetched();
    let r = one(&shared, &v1).await;
    assert_eq!(
        shared.bytes_fetched() - before,
        0,
        "a cached verdict costs no fetch (tag cached too)"
    );
    assert!(!r.distroless);
    let before = shared.bytes_fetched();
    one(&shared, &v2).await;
    let rebuild = shared.bytes_fetched() - before;
    assert!(
        rebuild < base_size / 20,
        "the rebuild fetched {rebuild} bytes; its shared base layer is {base_size}"
    );
    let ((verdicts, _), (layers, _)) = shared.cache_usage();
    assert_eq!((verdicts, layers), (2, 4));
}

#[tokio::test]
async fn inspection_stops_early_once_the_answer_cannot_change() {
    let registry = TestRegistry::start();
    let image = registry.image("early/stop:1");
    let bottom = Blob::layer(
        Layer::new().file("data/blob.bin", &vec![1u8; 2 << 20]).tar(),
        Compression::None,
    );
    let bottom_size = bottom.data.len() as u64;
    let top = Blob::layer(
        Layer::new().file("bin/sh", b"sh").file("usr/bin/apt", b"apt").tar(),
        Compression::Gzip,
    );
    let small = |n: &str| Blob::layer(Layer::new().file(n, b"data").tar(), Compression::Gzip);
    // Layers are read top-down a few at a time: the top window settles the answer.
    push(
        &image,
        &Image::new(vec![bottom, small("a"), small("b"), small("c"), top]).user("1000"),
    )
    .await;
    let insp = inspector(&registry);
    let r = one(&insp, &image).await;
    assert_eq!(
        (r.shells.as_slice(), r.package_managers.as_slice()),
        (["/bin/sh".to_string()].as_slice(), ["apt".to_string()].as_slice())
    );
    assert!(
        insp.bytes_fetched() < bottom_size,
        "the bottom layer was not fetched ({} bytes)",
        insp.bytes_fetched()
    );
}

#[tokio::test]
async fn the_base_image_annotation_is_reported() {
    let registry = TestRegistry::start();
    let image = registry.image("annotated/app:1");
    push(
        &image,
        &Image::new(vec![distroless_base()]).user("65532").annotate(
            "org.opencontainers.image.base.name",
            "gcr.io/distroless/static-debian12:nonroot",
        ),
    )
    .await;
    let r = one(&inspector(&registry), &image).await;
    assert_eq!(
        r.base_image.as_deref(),
        Some("gcr.io/distroless/static-debian12:nonroot")
    );
}

#[test]
fn the_inspect_command_prints_json_and_exits_by_verdict() {
    let registry = TestRegistry::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let good = registry.image("cli/good:1");
    let bad = registry.image("cli/bad:1");
    runtime.block_on(async {
        push(&good, &Image::new(vec![distroless_base()]).user("nonroot")).await;
        push(&bad, &Image::new(vec![debian_layer(Compression::Gzip)])).await;
    });
    let run = |args: &[&str]| {
        let mut inspect = std::process::Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
        inspect
            .args(["inspect", "--insecure-registry", &registry.host()])
            .args(args);
        crate::command::output(inspect)
    };
    let out = run(&[&good, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "image",
        "digest",
        "platform",
        "user",
        "uid",
        "shells",
        "packageManagers",
        "packageDatabases",
        "distroless",
        "evidence",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(
        (json["uid"].as_u64(), json["distroless"].as_bool()),
        (Some(65532), Some(true))
    );
    let out = run(&[&bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT distroless"));
    let out = run(&[&registry.image("cli/missing:1")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("not found"), "{err}");
}
