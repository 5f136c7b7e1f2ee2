//! What `check` makes of unusual input, as a CI job or a developer's shell
//! would hand it over: FIFOs, symlinks, UTF-16, a very large ConfigMap, no
//! objects at all, an object without a name.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

const ROOT_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: root\nspec:\n  securityContext:\n    runAsUser: 0\n  containers:\n  - name: app\n    image: app:1\n";

/// Runs `check`; past a minute (a generous bound: a FIFO nobody writes must
/// not hang it) it is killed and the test fails with what it printed.
fn check(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distroless-guard"));
    cmd.arg("check").args(args).env("NO_COLOR", "1");
    crate::command::within(cmd, None, Duration::from_secs(60))
}

fn mkfifo(path: &Path) {
    let mut cmd = Command::new("mkfifo");
    cmd.arg(path);
    let out = crate::command::output(cmd);
    assert!(out.status.success(), "mkfifo (coreutils): {}", stderr(&out));
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn names(report: &Value) -> Vec<String> {
    let mut names: Vec<String> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r["name"].as_str().unwrap(), r["source"].as_str().unwrap()))
        .collect();
    names.sort();
    names
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_fifo_named_like_a_manifest_is_reported_not_opened_and_the_files_beside_it_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-root.yaml"), ROOT_POD).unwrap();
    let fifo = dir.path().join("b-pipe.yaml");
    mkfifo(&fifo);
    let out = check(&["-f", path(dir.path()), "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unread manifest fails the run: {}",
        stderr(&out)
    );
    let report = json(&out);
    assert_eq!(report["results"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["results"][0]["name"], "root");
    assert_eq!(report["unreadable"][0]["path"], path(&fifo));
    assert_eq!(report["unreadable"][0]["kind"], "notAFile");
    assert!(
        stderr(&out).contains("a FIFO (named pipe), not a regular file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_fifo_named_on_the_command_line_is_read_as_process_substitution_gives_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("rendered");
    mkfifo(&fifo);
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, ROOT_POD).unwrap())
    };
    let out = check(&["-f", path(&fifo), "-o", "json"]);
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(json(&out)["results"][0]["name"], "root");
}

/// The same tree with the link's name sorting before and after its target:
/// the file is read once, under its real name, and the exit code is the same.
#[test]
fn a_directory_symlink_to_a_sibling_is_read_once_under_the_real_name_whatever_the_names_sort_as() {
    for link in ["a-link", "z-link"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("m-real")).unwrap();
        std::fs::write(dir.path().join("m-real/pod.yaml"), ROOT_POD).unwrap();
        std::os::unix::fs::symlink("m-real", dir.path().join(link)).unwrap();
        let out = check(&["-f", path(dir.path()), "-o", "json"]);
        assert_eq!(out.status.code(), Some(1), "{link}: {}", stderr(&out));
        let report = json(&out);
        let real = dir.path().join("m-real/pod.yaml");
        assert_eq!(names(&report), [format!("root {}:1", real.display())], "{link}");
        assert_eq!(
            report["unreadable"],
            serde_json::json!([]),
            "{link}: a sibling is no loop"
        );
    }
}

#[test]
fn a_symlink_to_a_directory_that_contains_it_is_a_loop_reported_once_and_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/pod.yaml"), ROOT_POD).unwrap();
    std::os::unix::fs::symlink("..", dir.path().join("sub/up")).unwrap();
    let out = check(&["-f", path(dir.path()), "-o", "json"]);
    let report = json(&out);
    assert_eq!(report["results"].as_array().unwrap().len(), 1, "{report}");
    let problems = report["unreadable"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["kind"], "loop");
    assert_eq!(problems[0]["path"], path(&dir.path().join("sub/up")));
}

#[test]
fn utf16_with_a_byte_order_mark_is_decoded_and_without_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let units: Vec<u16> = ROOT_POD.encode_utf16().collect();
    let le: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(units.iter().flat_map(|u| u.to_le_bytes()))
        .collect();
    let be: Vec<u8> = [0xFE, 0xFF]
        .into_iter()
        .chain(units.iter().flat_map(|u| u.to_be_bytes()))
        .collect();
    let bare: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
    let utf8_bom: Vec<u8> = [0xEF, 0xBB, 0xBF].into_iter().chain(ROOT_POD.bytes()).collect();
    for (name, bytes) in [("le.yaml", &le), ("be.yaml", &be), ("bom8.yaml", &utf8_bom)] {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        let out = check(&["-f", path(&dir.path().join(name)), "-o", "json"]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert_eq!(json(&out)["results"][0]["name"], "root", "{name}");
    }
    std::fs::write(dir.path().join("bare.yaml"), bare).unwrap();
    let out = check(&["-f", path(&dir.path().join("bare.yaml"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("UTF-16 text without a byte-order mark"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_30_mb_configmap_of_300000_keys_is_read_and_an_alias_bomb_still_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut big = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n");
    for i in 0..300_000 {
        big.push_str(&format!("  k{i}: \"{}\"\n", "x".repeat(90)));
    }
    assert!(big.len() > 30_000_000);
    std::fs::write(dir.path().join("big.yaml"), &big).unwrap();
    std::fs::write(dir.path().join("pod.yaml"), ROOT_POD).unwrap();
    let out = check(&["-f", path(dir.path()), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(json(&out)["unreadable"], serde_json::json!([]), "{}", stderr(&out));

    let mut laughs = vec!["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]".to_string()];
    for i in 1..10 {
        laughs.push(format!("a{i}: &a{i} [{}]", vec![format!("*a{}", i - 1); 9].join(", ")));
    }
    let bomb = dir.path().join("laughs.yaml");
    std::fs::write(
        &bomb,
        format!("apiVersion: v1\nkind: ConfigMap\n{}\n", laughs.join("\n")),
    )
    .unwrap();
    let out = check(&["-f", path(&bomb)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("billion laughs"), "{}", stderr(&out));
}

#[test]
fn nothing_to_check_is_an_error_naming_the_input_not_a_pass() {
    let empty = tempfile::tempdir().unwrap();
    let out = check(&["-f", path(empty.path())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nothing to check"), "{}", stderr(&out));
    assert!(stderr(&out).contains(path(empty.path())), "{}", stderr(&out));

    // A repository of Helm charts only: each chart named, and how to render it.
    let charts = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(charts.path().join("web/templates")).unwrap();
    std::fs::write(
        charts.path().join("web/Chart.yaml"),
        "apiVersion: v2\nname: web\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(charts.path().join("web/templates/deploy.yaml"), "kind: Deployment\n").unwrap();
    let out = check(&["-f", path(charts.path())]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("a Helm chart") && err.contains("--helm CHART"), "{err}");
}

#[test]
fn a_missing_path_is_one_error_saying_its_cause_once() {
    let out = check(&["-f", "no/such/dir"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("no/such/dir"), "{err}");
}

#[test]
fn an_object_without_a_name_says_so_and_counts_read_in_the_singular() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.yaml");
    std::fs::write(
        &file,
        "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        image: x\n",
    )
    .unwrap();
    let out = check(&["-f", path(&file)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Deployment default/(no name)"), "{text}");
    assert!(
        text.contains("\n1 object checked: 1 allowed, 0 denied; 0 violations"),
        "{text}"
    );
    let out = check(&["-f", path(&file), "-o", "json"]);
    assert_eq!(
        json(&out)["unreadable"],
        serde_json::json!([]),
        "always present, as the README shows"
    );
}

#[test]
fn fix_diff_shows_only_the_added_lines_and_fix_write_makes_that_change_in_place_keeping_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    let original = "# the web tier\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n        image: web:1  # pinned by CI\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n";
    std::fs::write(&file, original).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();

    let diff = check(&["-f", path(&file), "--fix", "--diff"]);
    assert_eq!(diff.status.code(), Some(0), "{}", stderr(&diff));
    let diff = String::from_utf8(diff.stdout).unwrap();
    let added: Vec<&str> = diff
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .collect();
    assert_eq!(
        added,
        [
            "+      securityContext:",
            "+        runAsNonRoot: true",
            "+        runAsUser: 65532",
            "+        runAsGroup: 65532",
            "+        fsGroup: 65532"
        ],
        "{diff}"
    );
    assert!(
        !diff.lines().any(|l| l.starts_with('-') && !l.starts_with("---")),
        "{diff}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        original,
        "--diff writes nothing"
    );

    let write = check(&["-f", path(&file), "--fix", "--write"]);
    assert_eq!(write.status.code(), Some(0), "{}", stderr(&write));
    assert!(write.stdout.is_empty());
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        written,
        original.replace("    spec:\n      containers:", "    spec:\n      securityContext:\n        runAsNonRoot: true\n        runAsUser: 65532\n        runAsGroup: 65532\n        fsGroup: 65532\n      containers:")
    );
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o640);
    let again = check(&["-f", path(&file), "--fix", "--diff"]);
    assert!(
        again.stdout.is_empty(),
        "fixed once is fixed: {}",
        String::from_utf8_lossy(&again.stdout)
    );

    let stdin = check(&["-f", "-", "--fix", "--write"]);
    assert_eq!(stdin.status.code(), Some(2));
    assert!(
        stderr(&stdin).contains("stdin and --helm renders are not files"),
        "{}",
        stderr(&stdin)
    );
}
