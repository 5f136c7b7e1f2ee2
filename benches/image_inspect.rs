//! Image inspection against a real registry on 127.0.0.1 (Debian's
//! `docker-registry`): a realistic ~60 MiB, 5-layer Debian-based app image with
//! the shell in the bottom layer, inspected cold, warm (cached), after a
//! rebuild that changes only the top layer, and the naive way a user would
//! script it (pull every blob, unpack, look for the files). Also a small
//! distroless image, cold.
//!
//! Last line: `RESULT image_inspect cold_ms=.. warm_us=.. rebuild_ms=.. bytes_fetched=.. image_bytes=.. naive_ms=..`

#[path = "support/images.rs"]
#[allow(dead_code)]
mod images;
#[path = "../tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;

use std::io::Read;
use std::time::{Duration, Instant};

use distroless_guard::image::{Inspector, InspectorConfig, Platform};
use images::{Filler, debian_base, layer};
use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use registry::{Image, TestRegistry, push};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The naive way: pull every blob, unpack each layer into a directory, look for the files.
async fn naive(image: &str) -> bool {
    let reference: Reference = image.parse().unwrap();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let pulled = client
        .pull(
            &reference,
            &RegistryAuth::Anonymous,
            vec!["application/vnd.oci.image.layer.v1.tar+gzip"],
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for layer in &pulled.layers {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&layer.data[..]));
        archive.set_preserve_permissions(false);
        archive.unpack(dir.path()).unwrap();
    }
    ["usr/bin/sh", "usr/bin/bash", "bin/sh", "usr/bin/apt"]
        .iter()
        .any(|p| dir.path().join(p).exists())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = TestRegistry::start();
    let mut fill = Filler(0x9e37_79b9_7f4a_7c15);
    println!("building the images...");
    let base = vec![
        layer(&mut fill, "usr/lib/x86_64-linux-gnu", 6000, 8 << 10, debian_base),
        layer(&mut fill, "usr/lib/python3", 3000, 10 << 10, |l| l),
        layer(&mut fill, "usr/share/app-deps", 1500, 12 << 10, |l| l),
        layer(&mut fill, "opt/runtime", 400, 24 << 10, |l| l),
    ];
    let top_v1 = layer(&mut fill, "app", 40, 256 << 10, |l| l.file("app/server", b"ELF v1"));
    let top_v2 = layer(&mut fill, "app", 40, 256 << 10, |l| l.file("app/server", b"ELF v2"));
    let image_bytes: usize = base.iter().chain([&top_v1]).map(|b| b.data.len()).sum();
    let v1 = registry.image("bench/app:1");
    let v2 = registry.image("bench/app:2");
    let small = registry.image("bench/distroless:1");
    runtime.block_on(async {
        let mut layers = base.clone();
        layers.push(top_v1.clone());
        push(&v1, &Image::new(layers).user("app")).await;
        let mut layers = base.clone();
        layers.push(top_v2.clone());
        push(&v2, &Image::new(layers).user("app")).await;
        let distroless = layer(&mut fill, "usr/lib", 200, 8 << 10, |l| {
            l.file(
                "etc/passwd",
                b"root:x:0:0::/root:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n",
            )
            .file("var/lib/dpkg/status.d/base", b"Package: base-files\n")
        });
        push(
            &small,
            &Image::new(vec![distroless, layer(&mut fill, "app", 4, 64 << 10, |l| l)]).user("nonroot"),
        )
        .await;
    });
    println!("image: {} layers, {} bytes compressed", 5, image_bytes);

    let config = || InspectorConfig {
        insecure_registries: vec![registry.host()],
        ..Default::default()
    };
    let options = Platform::default();
    runtime.block_on(async {
        // Cold: a fresh inspector, nothing cached.
        let inspector = Inspector::new(config()).expect("inspector");
        let t = Instant::now();
        let r = inspector.inspect(&v1, &options, None).await.unwrap();
        let cold = t.elapsed();
        let bytes_fetched = inspector.bytes_fetched();
        assert!(!r[0].distroless && r[0].uid == Some(10001));
        println!("cold:    {:>9.1} ms, {} bytes fetched, shells {:?}", cold.as_secs_f64() * 1e3, bytes_fetched, r[0].shells);

        // Warm: the same image again (tag and verdict cached).
        let mut warm = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            let r = inspector.inspect(&v1, &options, None).await.unwrap();
            warm.push(t.elapsed());
            assert!(!r[0].distroless);
        }
        let warm = median(warm);
        println!("warm:    {:>9.1} us (median of 2000)", warm.as_secs_f64() * 1e6);

        // Rebuild: same base layers, new top layer.
        let before = inspector.bytes_fetched();
        let t = Instant::now();
        inspector.inspect(&v2, &options, None).await.unwrap();
        let rebuild = t.elapsed();
        println!(
            "rebuild: {:>9.1} ms, {} bytes fetched",
            rebuild.as_secs_f64() * 1e3,
            inspector.bytes_fetched() - before
        );

        // Naive: pull everything, unpack, look.
        let t = Instant::now();
        assert!(naive(&v1).await);
        let naive_time = t.elapsed();
        println!("naive:   {:>9.1} ms (pull all blobs, unpack, look for files)", naive_time.as_secs_f64() * 1e3);

        // A small distroless image, cold.
        let fresh = Inspector::new(config()).expect("inspector");
        let t = Instant::now();
        let r = fresh.inspect(&small, &options, None).await.unwrap();
        let small_cold = t.elapsed();
        assert!(r[0].distroless);
        let small_bytes: u64 = fresh.bytes_fetched();
        println!("distroless image cold: {:.1} ms ({} bytes fetched)", small_cold.as_secs_f64() * 1e3, small_bytes);
        println!(
            "cold is {:.1}x faster than naive (goal >= 3); rebuild is {:.2} x cold (goal <= 0.2); warm {} us (goal < 50)",
            naive_time.as_secs_f64() / cold.as_secs_f64(),
            rebuild.as_secs_f64() / cold.as_secs_f64(),
            warm.as_micros()
        );
        println!(
            "RESULT image_inspect cold_ms={} warm_us={} rebuild_ms={} bytes_fetched={} image_bytes={} naive_ms={}",
            cold.as_millis(),
            warm.as_micros(),
            rebuild.as_millis(),
            bytes_fetched,
            image_bytes,
            naive_time.as_millis()
        );
    });
    let _ = Read::bytes(&b""[..]);
}
