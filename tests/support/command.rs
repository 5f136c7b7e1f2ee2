//! Every external command a test runs (our own binary, curl, shellcheck, the
//! chart's Python, chromium, Helm, kubectl) goes through here: under
//! testcluster's process guard (its own process group, killed with the test
//! process) and bounded, so a hung command fails its test with what it printed
//! instead of holding the run until CI's limit and leaking its children.

use std::process::{Command, Output};
use std::time::Duration;

/// How long one command may run unless its caller says otherwise: far beyond
/// what any needs (seconds), so only a hang reaches it.
pub const LIMIT: Duration = Duration::from_secs(300);

/// Runs `cmd` to its end (standard input empty) and returns its output.
pub fn output(cmd: Command) -> Output {
    within(cmd, None, LIMIT)
}

/// Runs `cmd` with `input` on its standard input.
pub fn output_with_input(cmd: Command, input: impl Into<Vec<u8>>) -> Output {
    within(cmd, Some(input.into()), LIMIT)
}

/// Runs `cmd` bounded by `limit`; a command that cannot start or outlives
/// `limit` fails the test with the reason (and, past the limit, its output).
pub fn within(cmd: Command, input: Option<Vec<u8>>, limit: Duration) -> Output {
    testcluster::process::output_within(cmd, input, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether `cmd` runs and succeeds within [`LIMIT`] (a probe for a tool:
/// one that is missing or fails is `false`, for the caller to explain).
pub fn succeeds(cmd: Command) -> bool {
    testcluster::process::output_within(cmd, None, LIMIT).is_ok_and(|o| o.status.success())
}
