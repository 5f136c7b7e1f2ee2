//! Docker cannot run on the development machines; the image is built in e2e
//! and CI workflows. Here the Dockerfile is checked for what the operator's
//! own pod must pass: a distroless non-root base, a numeric user, exec-form
//! entrypoint and command (no shell), only the binary copied.

use std::path::Path;

fn dockerfile() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap()
}

/// Instructions of the last stage, continuation lines joined.
fn final_stage() -> Vec<String> {
    let text = dockerfile().replace("\\\n", " ");
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.to_uppercase().starts_with("FROM "))
        .unwrap();
    lines[last_from..].to_vec()
}

#[test]
fn the_final_stage_is_distroless_and_non_root() {
    let stage = final_stage();
    assert!(
        stage[0].contains("gcr.io/distroless/") && stage[0].ends_with(":nonroot"),
        "{}",
        stage[0]
    );
    assert!(stage.iter().any(|l| l == "USER 65532:65532"), "{stage:?}");
    assert!(
        !stage.iter().any(|l| l.to_uppercase().starts_with("RUN ")),
        "no RUN in a stage without a shell: {stage:?}"
    );
    let copies: Vec<&String> = stage.iter().filter(|l| l.to_uppercase().starts_with("COPY ")).collect();
    assert_eq!(copies.len(), 1, "only the binary is copied: {copies:?}");
    assert!(copies[0].contains("distroless-guard"));
    for label in [
        "org.opencontainers.image.source",
        "org.opencontainers.image.version",
        "org.opencontainers.image.base.name",
    ] {
        assert!(stage.iter().any(|l| l.contains(label)), "label {label} missing");
    }
}

#[test]
fn the_final_stage_has_an_entrypoint_and_its_entrypoint_and_cmd_are_exec_form() {
    let stage = final_stage();
    assert!(
        stage.iter().any(|l| l.to_uppercase().starts_with("ENTRYPOINT ")),
        "no ENTRYPOINT in the final stage: {stage:?}"
    );
    for line in stage {
        let upper = line.to_uppercase();
        if upper.starts_with("ENTRYPOINT ") || upper.starts_with("CMD ") {
            let args = line.split_once(' ').unwrap().1.trim();
            let parsed: Vec<String> = serde_json::from_str(args).unwrap_or_else(|_| panic!("shell form: {line}"));
            assert!(!parsed.is_empty());
            assert!(!["sh", "/bin/sh", "bash"].contains(&parsed[0].as_str()), "{line}");
        }
    }
}

#[test]
fn the_dockerfile_and_xtask_image_give_the_same_labels_user_entrypoint_and_command() {
    use testcluster::operator_image::{CMD, ENTRYPOINT, LABELS, USER};
    let stage = final_stage().join("\n");
    for (key, value) in LABELS {
        let expected = if value.is_empty() {
            format!("{key}=\"${{VERSION}}\"")
        } else {
            format!("{key}=\"{value}\"")
        };
        assert!(stage.contains(&expected), "the Dockerfile lacks {expected}: {stage}");
    }
    assert!(stage.contains(&format!("USER {USER}")), "{stage}");
    assert!(
        stage.contains(&format!("ENTRYPOINT {}", serde_json::to_string(ENTRYPOINT).unwrap())),
        "{stage}"
    );
    assert!(
        stage.contains(&format!("CMD {}", serde_json::to_string(CMD).unwrap())),
        "{stage}"
    );
}
