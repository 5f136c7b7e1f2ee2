//! `distroless-guard check`: the engine over manifests, offline; the report
//! for people (text) or tools (JSON), or the manifests with `--fix` applied.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use json_patch::PatchOperation;

use super::{ImageArgs, OutputFormat};
use crate::api::Action;
use crate::manifest::verdicts::{self, Report};
use crate::manifest::{self, Document};
use crate::policy::ImageFacts;

#[derive(Args, Debug)]
pub(super) struct CheckArgs {
    /// Files or directories (searched recursively for .yaml, .yml, .json); `-` reads stdin.
    #[arg(short = 'f', long = "filename", required_unless_present = "helm", num_args = 1..)]
    files: Vec<PathBuf>,
    /// Render this Helm chart with the real Helm engine (`helm template`, the
    /// `helm` on PATH or $HELM) and check what it renders.
    #[arg(long, value_name = "CHART")]
    helm: Option<String>,
    /// Values files for --helm.
    #[arg(long = "values", value_name = "FILE", requires = "helm")]
    values: Vec<PathBuf>,
    /// DistrolessPolicy manifests to apply; without any, the built-in default policy
    /// (every rule denies, UID 65532) is used.
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    /// Print the manifests with mutation applied, as YAML, instead of a report.
    #[arg(long)]
    fix: bool,
    /// With --fix: write each changed file in place (atomically, a file at a
    /// time) instead of printing; nothing is printed.
    #[arg(long, requires = "fix", conflicts_with = "diff")]
    write: bool,
    /// With --fix: print a unified diff of each changed file instead of the manifests.
    #[arg(long, requires = "fix")]
    diff: bool,
    /// Exit 2 when any file or object could not be read (Helm templates, YAML
    /// that does not parse, objects of the wrong shape); without it they are
    /// reported on stderr and the exit code follows the verdicts of what was read.
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    images: ImageArgs,
}

/// Inspects what the plans name, each under its own deadline.
fn gather_images(
    config: crate::image::InspectorConfig,
    plans: Vec<crate::policy::InspectionPlan>,
) -> anyhow::Result<ImageFacts> {
    let runtime = crate::telemetry::runtime().context("cannot start the async runtime")?;
    let inspector = crate::image::Inspector::new(config)?;
    let facts = runtime.block_on(async {
        let mut facts = ImageFacts::new();
        for plan in plans {
            let missing: Vec<String> = plan.images.into_iter().filter(|i| !facts.contains_key(i)).collect();
            facts.extend(
                crate::admission::images::gather(&inspector, &missing, &plan.platform, plan.timeout, None).await,
            );
        }
        facts
    });
    runtime.shutdown_background();
    Ok(facts)
}

/// Whether everything was allowed. Unreadable files are reported on stderr
/// (and in the JSON report); they are an error (exit 2) when hostile or broken
/// beyond a template or a typo, or with `--strict`.
pub(super) fn run(args: &CheckArgs) -> anyhow::Result<bool> {
    if args.write && (args.helm.is_some() || args.files.iter().any(|f| f.as_os_str() == "-")) {
        anyhow::bail!(
            "--write fixes files in place; stdin and --helm renders are not files (print the fix with --fix alone)"
        );
    }
    let policies = manifest::load_policies(&args.policies)?;
    let mut loaded = manifest::read(&args.files)?;
    if let Some(chart) = &args.helm {
        let rendered = manifest::read_rendered(chart, &helm_template(chart, &args.values)?);
        // Numbered after the files' documents, for --fix.
        let first = loaded.raw.len();
        loaded.docs.extend(rendered.docs.into_iter().map(|d| Document {
            raw: d.raw + first,
            ..d
        }));
        loaded.problems.extend(rendered.problems);
        loaded.raw.extend(rendered.raw);
    }
    if loaded.docs.is_empty() {
        return Err(nothing_to_check(args, &loaded.problems));
    }
    let mut docs = loaded.docs;
    let raw = loaded.raw;
    let facts = match args.images.inspector_config()? {
        Some(config) => Some(gather_images(config, verdicts::inspection_plans(&docs, &policies))?),
        None => None,
    };
    let mut report = verdicts::check(&mut docs, &policies, jiff::Timestamp::now(), args.fix, facts.as_ref());
    report.unreadable.splice(0..0, loaded.problems);
    let mut stdout = std::io::stdout().lock();
    let mut unsafe_fixes = Vec::new();
    if args.fix && (args.write || args.diff) {
        let fixed = fixed_documents(&raw, &docs, &mut unsafe_fixes);
        let files = fixed_files(&raw, &fixed)?;
        if args.write {
            files.iter().try_for_each(|f| f.write())
        } else {
            files.iter().try_for_each(|f| stdout.write_all(f.diff().as_bytes()))
        }
    } else if args.fix {
        write_fixed(&mut stdout, &raw, &docs, &mut unsafe_fixes)
    } else if args.output == OutputFormat::Json {
        serde_json::to_writer_pretty(&mut stdout, &report)
            .map_err(std::io::Error::other)
            .and_then(|()| stdout.write_all(b"\n"))
    } else {
        write_text(&mut stdout, &report)
    }
    .context("cannot write output")?;
    drop(stdout);
    report_unreadable(&report.unreadable, args.strict)?;
    if !unsafe_fixes.is_empty() {
        anyhow::bail!(
            "{} document(s) printed unchanged: their fix did not read back as the fixed object ({})",
            unsafe_fixes.len(),
            unsafe_fixes.join(", ")
        );
    }
    Ok(report.allowed())
}

/// No Kubernetes object in the input: a check of nothing is a mistake (a
/// wrong path, an empty render), never a pass. Files that could not be read
/// are said first.
fn nothing_to_check(args: &CheckArgs, problems: &[manifest::Problem]) -> anyhow::Error {
    let _ = report_unreadable(problems, args.strict);
    let mut inputs: Vec<String> = args.files.iter().map(|p| p.display().to_string()).collect();
    inputs.extend(args.helm.iter().map(|c| format!("the chart {c}")));
    let charts = problems.iter().any(|p| p.kind == manifest::ProblemKind::Template);
    anyhow::anyhow!(
        "nothing to check: no Kubernetes object (a YAML or JSON document with a kind) in {}{}",
        inputs.join(", "),
        if charts {
            "; render Helm charts first with --helm CHART"
        } else {
            ""
        }
    )
}

/// What `helm template` renders of a chart (a path or a repository reference).
fn helm_template(chart: &str, values: &[PathBuf]) -> anyhow::Result<String> {
    let helm = std::env::var_os("HELM").unwrap_or_else(|| "helm".into());
    let mut cmd = std::process::Command::new(&helm);
    cmd.args(["template", "distroless-guard-check", chart]);
    for v in values {
        cmd.arg("--values").arg(v);
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().with_context(|| {
        format!(
            "cannot run {} to render {chart} (install Helm, or set HELM to its path)",
            helm.to_string_lossy()
        )
    })?;
    if !out.status.success() {
        anyhow::bail!(
            "helm template {chart} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("helm template printed bytes that are not UTF-8")
}

/// Says on stderr what could not be read, once per file; an error when any must fail the run.
pub(super) fn report_unreadable(problems: &[manifest::Problem], strict: bool) -> anyhow::Result<()> {
    let paint = Paint(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    let failing = problems.iter().filter(|p| strict || p.kind.is_error()).count();
    let mut stderr = std::io::stderr().lock();
    for p in problems {
        let label = if strict || p.kind.is_error() {
            paint.wrap("1;31", "error")
        } else {
            paint.wrap("1;33", "skipped")
        };
        let _ = writeln!(stderr, "{label}: {p}");
    }
    if failing > 0 {
        anyhow::bail!(
            "{failing} of {} unreadable files or objects fail the check{}",
            problems.len(),
            if strict { " (--strict)" } else { "" }
        );
    }
    Ok(())
}

/// The fixed text of each YAML document `--fix` changed (`None`: unchanged,
/// or a fix that cannot be written back exactly, named in `unsafe_fixes`).
fn fixed_documents(
    raw: &[manifest::RawDocument],
    docs: &[Document],
    unsafe_fixes: &mut Vec<String>,
) -> Vec<Option<String>> {
    let mut by_raw: Vec<Vec<&Document>> = vec![Vec::new(); raw.len()];
    for d in docs {
        if let Some(mine) = by_raw.get_mut(d.raw) {
            mine.push(d);
        }
    }
    raw.iter()
        .zip(&by_raw)
        .map(|(r, mine)| {
            if !mine.iter().any(|d| d.changed) {
                return None;
            }
            let fixed = fixed_text(r, mine);
            if fixed.is_none() {
                unsafe_fixes.push(mine.first().map_or_else(|| r.source.clone(), |d| d.location()));
            }
            fixed
        })
        .collect()
}

/// A file `--fix` changed: its text as read and as fixed.
struct FixedFile {
    path: PathBuf,
    before: String,
    after: String,
}

impl FixedFile {
    /// In place and atomically: a sibling temporary file with the same
    /// permissions, renamed over the original.
    fn write(&self) -> std::io::Result<()> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(self.after.as_bytes())?;
        let permissions = std::fs::metadata(&self.path)?.permissions();
        tmp.as_file().set_permissions(permissions)?;
        tmp.persist(&self.path).map(drop).map_err(|e| e.error)
    }

    /// A unified diff, as `git diff` would print it.
    fn diff(&self) -> String {
        let name = self.path.display().to_string();
        let (a, b) = if self.path.is_absolute() {
            (name.clone(), name)
        } else {
            (format!("a/{name}"), format!("b/{name}"))
        };
        similar::TextDiff::from_lines(&self.before, &self.after)
            .unified_diff()
            .header(&a, &b)
            .to_string()
    }
}

/// Each file with a changed document: its text with every changed
/// document's text replaced by the fixed one, found in order in the file
/// (so everything between, separators and comments, stays as written).
/// Input that is not a file (stdin, a Helm render) cannot be written back.
fn fixed_files(raw: &[manifest::RawDocument], fixed: &[Option<String>]) -> anyhow::Result<Vec<FixedFile>> {
    let mut files: Vec<FixedFile> = Vec::new();
    let mut current: Option<&str> = None;
    let mut cursor = 0;
    for (r, fixed) in raw.iter().zip(fixed) {
        if current != Some(r.source.as_str()) {
            current = Some(&r.source);
            cursor = 0;
        }
        let path = PathBuf::from(&r.source);
        let Some(fixed) = fixed else {
            continue;
        };
        if r.source == "-" || !path.is_file() {
            anyhow::bail!(
                "--write and --diff fix files; {} is not one (print the fix with --fix alone)",
                r.source
            );
        }
        if files.last().is_none_or(|f| f.path != path) {
            let before = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
            files.push(FixedFile {
                path: path.clone(),
                after: before.clone(),
                before,
            });
        }
        let file = files.last_mut().expect("pushed above");
        let at = file.after[cursor..]
            .find(&r.text)
            .map(|i| i + cursor)
            .with_context(|| {
                format!(
                    "{}: a document is not found again in the file as read; not written",
                    r.source
                )
            })?;
        file.after.replace_range(at..at + r.text.len(), fixed);
        cursor = at + fixed.len();
    }
    Ok(files)
}

/// Writes every YAML document read, in order: as written (byte for byte:
/// comments, anchors, octal modes, kustomize patches without `kind`, YAML
/// that did not parse) unless `--fix` changed an object in it; a changed one
/// is printed again from the fixed object, then read back, and printed as
/// written instead (named in `unsafe_fixes`) if it does not read back as the
/// fixed object: a fix never writes a manifest that means something else.
fn write_fixed(
    out: &mut impl Write,
    raw: &[manifest::RawDocument],
    docs: &[Document],
    unsafe_fixes: &mut Vec<String>,
) -> std::io::Result<()> {
    let many_sources = raw.windows(2).any(|w| w[0].source != w[1].source);
    let mut last_source = None;
    let mut by_raw: Vec<Vec<&Document>> = vec![Vec::new(); raw.len()];
    for d in docs {
        if let Some(mine) = by_raw.get_mut(d.raw) {
            mine.push(d);
        }
    }
    for (i, (r, mine)) in raw.iter().zip(&by_raw).enumerate() {
        if i > 0 {
            writeln!(out, "---")?;
        }
        if many_sources && last_source != Some(&r.source) {
            writeln!(out, "# Source: {}", r.source)?;
            last_source = Some(&r.source);
        }
        match mine.iter().any(|d| d.changed).then(|| fixed_text(r, mine)) {
            Some(Some(yaml)) => {
                out.write_all(yaml.as_bytes())?;
                if !yaml.ends_with('\n') {
                    writeln!(out)?;
                }
            }
            unchanged_or_unsafe => {
                // A fix that cannot be written back exactly fails the run:
                // the verdicts are of the fixed objects, not of this text.
                if unchanged_or_unsafe.is_some() {
                    unsafe_fixes.push(mine.first().map_or_else(|| r.source.clone(), |d| d.location()));
                }
                out.write_all(r.text.as_bytes())?;
                if !r.text.ends_with('\n') {
                    writeln!(out)?;
                }
            }
        }
    }
    Ok(())
}

/// The YAML of a changed document, if it can be written and reads back as
/// what was meant: the original text with the fixes as their own lines
/// ([`manifest::edit`]) where they can be placed, else printed from the
/// fixed object (a `List` with its items replaced).
fn fixed_text(r: &manifest::RawDocument, docs: &[&Document]) -> Option<String> {
    let reads_as = |yaml: &str, value: &serde_json::Value| {
        serde_saphyr::from_str_with_options::<serde_json::Value>(yaml, manifest::yaml_options())
            .ok()
            .as_ref()
            == Some(value)
    };
    let value = if r.list {
        let mut list: serde_json::Value =
            serde_saphyr::from_str_with_options(&r.text, manifest::yaml_options()).ok()?;
        let mut fixed = docs.iter().map(|d| d.value.clone());
        manifest::replace_list_items(&mut list, &mut fixed)?;
        list
    } else {
        docs.first()?.value.clone()
    };
    // The fixes of a List's items, at the items' places in the List.
    let ops: Option<Vec<json_patch::PatchOperation>> = if r.list {
        manifest::list_item_pointers(&value)
            .iter()
            .zip(docs)
            .flat_map(|(at, d)| d.fixes.iter().map(move |op| manifest::edit::rebase(op, at)))
            .collect()
    } else {
        Some(docs.first()?.fixes.clone())
    };
    if let Some(edited) = ops.and_then(|ops| manifest::edit::apply(&r.text, &ops, &value))
        && reads_as(&edited, &value)
    {
        return Some(edited);
    }
    let yaml = serde_saphyr::to_string(&value).ok()?;
    let back: serde_json::Value = serde_saphyr::from_str_with_options(&yaml, manifest::yaml_options()).ok()?;
    (back == value).then_some(yaml)
}

/// Colours for a terminal; none when output is not a terminal or `NO_COLOR` is set.
struct Paint(bool);

impl Paint {
    fn detect() -> Self {
        Paint(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }

    fn wrap(&self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn action(&self, action: Action) -> String {
        let (code, label) = match action {
            Action::Deny => ("1;31", "DENY "),
            Action::Warn => ("1;33", "WARN "),
            Action::Audit => ("1;36", "AUDIT"),
        };
        self.wrap(code, label)
    }
}

/// A patch operation for people: `set spec.securityContext = {"runAsNonRoot":true}`.
fn describe_op(op: &PatchOperation) -> String {
    // As the violations' paths read: `spec.nodeSets[0].podTemplate.spec`.
    let mut path = String::new();
    for token in op.path().tokens() {
        let token = token.decoded();
        if !path.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{token}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&token);
        }
    }
    match op {
        PatchOperation::Add(a) => format!("set {path} = {}", a.value),
        PatchOperation::Replace(r) => format!("replace {path} with {}", r.value),
        other => format!("{other}"),
    }
}

/// Writes the report for people: one block per object, then a summary line.
fn write_text(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let paint = Paint::detect();
    let mut counts: BTreeMap<Action, usize> = BTreeMap::new();
    for r in &report.results {
        let mark = if !r.allowed {
            paint.wrap("1;31", "✗")
        } else if r.violations.is_empty() {
            paint.wrap("1;32", "✓")
        } else {
            paint.wrap("1;33", "!")
        };
        let name = if r.name.is_empty() { "(no name)" } else { &r.name };
        let at = r
            .pod_spec_path
            .as_deref()
            .map(|p| format!(" at {p}"))
            .unwrap_or_default();
        writeln!(out, "{mark} {} {}/{name}{at}  ({})", r.kind, r.namespace, r.source)?;
        for v in &r.violations {
            *counts.entry(v.action).or_default() += 1;
            writeln!(
                out,
                "    {} [{}] {}",
                paint.action(v.action),
                v.rule,
                paint.wrap("2", &v.path)
            )?;
            writeln!(out, "          {}", v.message)?;
        }
        for op in &r.mutations {
            writeln!(out, "    {} {}", paint.wrap("1;34", "MUTATE"), describe_op(op))?;
        }
    }
    let denied = report.results.iter().filter(|r| !r.allowed).count();
    let count = |a| counts.get(&a).copied().unwrap_or(0);
    writeln!(
        out,
        "\n{} checked: {} allowed, {} denied; {} ({} Deny, {} Warn, {} Audit)",
        plural(report.results.len(), "object"),
        report.results.len() - denied,
        denied,
        plural(counts.values().sum::<usize>(), "violation"),
        count(Action::Deny),
        count(Action::Warn),
        count(Action::Audit),
    )
}

/// `1 object`, `2 objects`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
