//! `cargo xtask mutants`: mutation testing of the pure cores with
//! cargo-mutants (installed from crates.io when missing). Which files are
//! examined, which tests run and the reviewed exclusions are in
//! `.cargo/mutants.toml`, so a plain `cargo mutants` does the same.
//!
//! `--in-diff REV` examines only the lines changed since REV (a commit's
//! worth, minutes); with no option, every mutant of the pure cores (hours on
//! 2 cores: the README gives the measured figure).

use std::process::Stdio;
use std::time::Instant;

const CARGO_MUTANTS: &str = "27.1.0";

fn have_cargo_mutants() -> bool {
    crate::cargo()
        .args(["mutants", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Counts of one run, from cargo-mutants' `outcomes.json`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    total: u64,
    caught: u64,
    missed: u64,
    unviable: u64,
    timeout: u64,
}

fn counts(outcomes: &serde_json::Value) -> Counts {
    let n = |key: &str| outcomes.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Counts {
        total: n("total_mutants"),
        caught: n("caught"),
        missed: n("missed"),
        unviable: n("unviable"),
        timeout: n("timeout"),
    }
}

/// The configuration with `examine_globs` replaced by `files`.
fn narrow(config: &str, files: &[String]) -> Result<String, String> {
    let start = config
        .find("examine_globs = [")
        .ok_or(".cargo/mutants.toml has no examine_globs")?;
    let end = start
        + config[start..]
            .find(']')
            .ok_or(".cargo/mutants.toml: examine_globs is not closed")?
        + 1;
    let globs: Vec<String> = files.iter().map(|f| format!("{f:?}")).collect();
    Ok(format!(
        "{}examine_globs = [{}]{}",
        &config[..start],
        globs.join(", "),
        &config[end..]
    ))
}

/// `cargo xtask mutants [--in-diff REV] [-f FILE...]`.
pub fn run(in_diff: Option<&str>, files: &[String]) -> Result<(), String> {
    let root = crate::root();
    if !have_cargo_mutants() {
        eprintln!("xtask mutants: installing cargo-mutants {CARGO_MUTANTS} from crates.io");
        let status = crate::cargo()
            .args(["install", "--locked", "cargo-mutants", "--version", CARGO_MUTANTS])
            .status()
            .map_err(|e| format!("cargo install cargo-mutants: {e}"))?;
        if !status.success() {
            return Err(format!("cargo install cargo-mutants failed ({status})"));
        }
    }
    // Kept for reading afterwards: target/mutants/mutants.out/{caught,missed}.txt.
    let out = root.join("target/mutants");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut cmd = crate::cargo();
    cmd.current_dir(&root)
        .args(["mutants", "--no-shuffle", "--output"])
        .arg(&out);
    if !files.is_empty() {
        // The repository's configuration (test arguments, exclusions) with
        // these files in place of its examine_globs: cargo-mutants adds
        // `--file` to those rather than narrowing them.
        let config = std::fs::read_to_string(root.join(".cargo/mutants.toml"))
            .map_err(|e| format!(".cargo/mutants.toml: {e}"))?;
        let narrowed = narrow(&config, files)?;
        let path = out.join("mutants.toml");
        std::fs::write(&path, narrowed).map_err(|e| format!("{}: {e}", path.display()))?;
        cmd.arg("--config").arg(&path);
    }
    if let Some(rev) = in_diff {
        let diff = std::process::Command::new("git")
            .current_dir(&root)
            .args(["diff", rev, "--", "src"])
            .output()
            .map_err(|e| format!("git diff {rev}: {e}"))?;
        if !diff.status.success() {
            return Err(format!(
                "git diff {rev}: {} (a shallow clone lacks older commits: `git fetch --deepen=1` fetches one more)",
                String::from_utf8_lossy(&diff.stderr).trim()
            ));
        }
        let path = out.join("change.diff");
        std::fs::write(&path, &diff.stdout).map_err(|e| format!("{}: {e}", path.display()))?;
        cmd.arg("--in-diff").arg(&path);
    }
    let started = Instant::now();
    let status = cmd.status().map_err(|e| format!("cargo mutants: {e}"))?;
    let seconds = started.elapsed().as_secs();
    let outcomes = out.join("mutants.out/outcomes.json");
    let counts = std::fs::read_to_string(&outcomes)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .map(|json| counts(&json))
        .unwrap_or_default();
    println!(
        "RESULT mutants total={} caught={} missed={} unviable={} timeout={} seconds={seconds}",
        counts.total, counts.caught, counts.missed, counts.unviable, counts.timeout
    );
    // cargo-mutants exits 2 when a mutant was missed, 3 on a timeout; a
    // timeout is a mutant the tests stopped (an endless loop), so only a
    // missed one fails.
    if status.success() || (counts.missed == 0 && status.code() == Some(3)) {
        Ok(())
    } else {
        let missed = out.join("mutants.out/missed.txt");
        let list = std::fs::read_to_string(missed).unwrap_or_default();
        Err(format!(
            "cargo mutants ({status}): mutants the tests do not catch; add a test, or a reviewed line to \
             exclude_re in .cargo/mutants.toml with its reason:\n{list}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_files_replace_the_examined_globs_and_keep_the_rest_of_the_configuration() {
        let config = "# c\nexamine_globs = [\n    \"src/a/**/*.rs\",\n]\nadditional_cargo_args = [\"--lib\"]\n";
        assert_eq!(
            narrow(config, &["src/b.rs".into()]).unwrap(),
            "# c\nexamine_globs = [\"src/b.rs\"]\nadditional_cargo_args = [\"--lib\"]\n"
        );
        assert!(narrow("exclude_re = []", &["x".into()]).is_err());
    }

    #[test]
    fn outcome_counts_are_read_from_cargo_mutants_json() {
        let json = serde_json::json!({"total_mutants": 10, "caught": 6, "missed": 2, "unviable": 1, "timeout": 1,
            "outcomes": []});
        assert_eq!(
            counts(&json),
            Counts {
                total: 10,
                caught: 6,
                missed: 2,
                unviable: 1,
                timeout: 1
            }
        );
    }
}
