//! The inventory of manifests whose images are in a real registry, as the
//! HTML page a platform team opens: rendered by a real headless browser
//! (Debian's chromium), its DOM and a screenshot checked.

use std::process::Command;

use crate::support::registry::{Blob, Compression, Image, Layer, TestRegistry, push};

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser"] {
        let mut version = Command::new(c);
        version.arg("--version");
        if crate::command::succeeds(version) {
            return c;
        }
    }
    panic!("no chromium on the PATH; install it with: apt-get install chromium (or run `cargo xtask test`)");
}

/// Runs the browser under testcluster's guard: its whole process group is
/// killed with the test, or after two minutes (the test then fails saying so).
fn bounded(cmd: Command) -> std::process::Output {
    crate::command::within(cmd, None, std::time::Duration::from_secs(120))
}

fn manifests(dir: &std::path::Path, images: &[(&str, &str, String)]) {
    for (ns, name, image) in images {
        let doc = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      securityContext: {{runAsNonRoot: true, runAsUser: 65532}}\n      containers: [{{name: app, image: \"{image}\"}}]\n"
        );
        std::fs::write(dir.join(format!("{ns}-{name}.yaml")), doc).unwrap();
    }
}

/// Pixels of exactly this colour in an RGBA/RGB PNG.
fn pixels_of(png_bytes: &[u8], rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    buf[..info.buffer_size()].chunks(step).filter(|p| p[..3] == rgb).count()
}

#[test]
fn the_html_inventory_renders_its_chart_and_tables_in_a_real_browser() {
    let browser = chromium();
    let registry = TestRegistry::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let distroless = registry.image("shop/api:1-distroless");
    let debian = registry.image("shop/api:1-debian");
    rt.block_on(async {
        let app = Layer::new().file("app", b"ELF").tar();
        push(
            &distroless,
            &Image::new(vec![Blob::layer(app, Compression::Gzip)]).user("65532"),
        )
        .await;
        let base = Layer::new()
            .symlink("bin", "usr/bin")
            .file("usr/bin/dash", b"ELF")
            .symlink("usr/bin/sh", "dash")
            .tar();
        push(
            &debian,
            &Image::new(vec![Blob::layer(base, Compression::Gzip)]).user("65532"),
        )
        .await;
    });
    let dir = tempfile::tempdir().unwrap();
    manifests(
        dir.path(),
        &[
            ("shop", "web", distroless.clone()),
            ("shop", "api", debian.clone()),
            ("ops", "tool", debian.clone()),
            ("ops", "cron", distroless.clone()),
        ],
    );
    let mut inventory = Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
    inventory
        .args([
            "inventory",
            "-o",
            "html",
            "--inspect-images",
            "--insecure-registry",
            &registry.host(),
            "-f",
        ])
        .arg(dir.path());
    let out = crate::command::output(inventory);
    assert_eq!(
        out.status.code(),
        Some(1),
        "not everything is done: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = dir.path().join("inventory.html");
    std::fs::write(&page, &out.stdout).unwrap();
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(html.contains("/usr/bin/dash"), "the evidence path is in the page");

    let url = format!("file://{}", page.display());
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1200,900",
    ];
    let mut dump = Command::new(browser);
    dump.args(common).args(["--dump-dom", &url]);
    let dom = bounded(dump);
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(
        dom.matches("<table class=\"workloads\"").count(),
        2,
        "a table per namespace"
    );
    assert_eq!(
        dom.matches("<rect ").count(),
        4,
        "a bar part per state present in each namespace"
    );
    assert!(dom.contains("2 of 4 workloads done"), "{dom}");

    let shot = dir.path().join("shot.png");
    let mut screenshot = Command::new(browser);
    screenshot
        .args(common)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url);
    let run = bounded(screenshot);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let png_bytes = std::fs::read(&shot).unwrap();
    // The bars are drawn: green (done) and red (not distroless), each 300 px wide at least in one row.
    let green = pixels_of(&png_bytes, [0x1b, 0x9e, 0x47]);
    let red = pixels_of(&png_bytes, [0xd6, 0x28, 0x28]);
    assert!(
        green > 300 * 15 && red > 300 * 15,
        "chart not rendered: green {green} px, red {red} px"
    );
    // And the page is not only the chart: most of it is the white page with text.
    let white = pixels_of(&png_bytes, [0xff, 0xff, 0xff]);
    assert!(white > 1200 * 900 / 2, "{white}");
}
