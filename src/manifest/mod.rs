//! Reading manifests: files, directories (recursively), or stdin; multi-document
//! YAML, JSON and `kind: List`. Parse errors name the file and the line.
//! [`verdicts`] judges what was read, as `check` does.

pub(crate) mod edit;
pub mod verdicts;

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One object read from a manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The file it came from (`-` for stdin).
    pub source: String,
    /// The 1-based line its YAML document starts on.
    pub line: usize,
    pub value: Value,
    /// The index of the YAML document it was read from in [`Loaded::raw`].
    pub raw: usize,
    /// Whether `--fix` changed `value`.
    pub changed: bool,
    /// What `--fix` applied to `value`, in order (for [`edit`]).
    pub fixes: Vec<json_patch::PatchOperation>,
}

/// One YAML document as written, whatever it holds (an object, a `List`, a
/// kustomize patch without `kind`, YAML that does not parse, comments only):
/// `--fix` prints it back byte for byte unless it changed an object in it.
#[derive(Clone, Debug, PartialEq)]
pub struct RawDocument {
    pub source: String,
    pub text: String,
    /// A `List` whose items were read as the documents.
    pub list: bool,
}

/// Nodes (mappings, sequences, scalars) one YAML document may hold. The
/// reader's default (250,000) refuses a legitimate 30 MB ConfigMap of
/// 300,000 keys; what it guards against, aliases expanding, has its own
/// limits (aliases, anchors, recorded anchor events).
pub const MAX_NODES: usize = 2_000_000;

/// How manifests are parsed: YAML 1.1 integers, as kubectl reads them
/// (`defaultMode: 0400` is octal 256, not decimal 400), and the reader's
/// limits with room for every file up to [`MAX_FILE_BYTES`].
pub fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    let mut budget = serde_saphyr::budget::Budget::default();
    budget.max_nodes = MAX_NODES;
    budget.max_events = 2 * MAX_NODES;
    // Aliases replayed into anchored collections: what an alias bomb grows.
    budget.max_recorded_anchor_events = 250_000;
    options.budget = Some(budget);
    options
}

impl Document {
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or_default()
    }

    pub fn location(&self) -> String {
        format!("{}:{}", self.source, self.line)
    }
}

/// The largest manifest file `check` reads (bigger files are reported, not read).
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// What kind of trouble a file gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ProblemKind {
    /// A file under a Helm chart's `templates/`, or YAML broken by `{{ ... }}`.
    Template,
    /// YAML or JSON that does not parse.
    Syntax,
    /// A Kubernetes object whose fields have the wrong shape.
    Invalid,
    /// Over a reader limit: size, nesting, node count, alias expansion.
    Limit,
    /// Not text: a NUL byte or bytes that are not UTF-8.
    Binary,
    /// A symlink to a directory that contains it.
    Loop,
    /// A FIFO, socket or device named like a manifest.
    NotAFile,
    /// The file or directory could not be read.
    Io,
}

impl ProblemKind {
    /// Whether the file is hostile or broken beyond a template or a typo: such
    /// files make `check` exit 2 even without `--strict`.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            ProblemKind::Limit | ProblemKind::Binary | ProblemKind::Loop | ProblemKind::Io | ProblemKind::NotAFile
        )
    }
}

/// A file (or one object in it) that could not be read as manifests; reported once.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub path: String,
    /// 1-based; `None` for a directory or a whole file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub kind: ProblemKind,
    pub message: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path, self.message)?,
            None => write!(f, "{}: {}", self.path, self.message)?,
        }
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl Problem {
    pub fn new(path: &str, line: Option<usize>, kind: ProblemKind, message: impl Into<String>) -> Self {
        Problem {
            path: path.to_string(),
            line,
            kind,
            message: message.into(),
            hint: None,
        }
    }

    fn at(path: &Path, line: Option<usize>, kind: ProblemKind, message: impl Into<String>) -> Self {
        Problem::new(&path.display().to_string(), line, kind, message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The cause is the source (printed by error chains once, not twice).
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unreadable(Box<Problem>),
}

/// What a set of paths held: the objects read, and each file that could not be read.
#[derive(Debug, Default)]
pub struct Loaded {
    pub docs: Vec<Document>,
    pub problems: Vec<Problem>,
    /// Every YAML document of the files read, in order.
    pub raw: Vec<RawDocument>,
}

fn is_manifest_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// A file below a directory that could not be looked at: a problem when it
/// is named like a manifest, none of our business otherwise.
fn unreadable(path: &Path, e: &std::io::Error) -> Option<Problem> {
    is_manifest_file(path).then(|| Problem::at(path, None, ProblemKind::Io, e.to_string()))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ManifestError + '_ {
    move |source| ManifestError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The files below the paths, each once: directories are walked in a stable
/// order and entries reached through a symlink are read after every real
/// path, so a file is named by its real path and read once, whatever the
/// names sort as. A symlink to a directory that contains it (a loop) is
/// reported and not entered; a symlink to a directory read already is not
/// read again. Only regular files are opened: a FIFO, socket or device named
/// like a manifest is reported (reading a FIFO would wait forever).
#[derive(Default)]
struct Walk {
    dirs: std::collections::HashSet<PathBuf>,
    files: std::collections::HashSet<PathBuf>,
    out: Vec<PathBuf>,
    problems: Vec<Problem>,
    links: std::collections::VecDeque<PathBuf>,
}

impl Walk {
    fn file(&mut self, path: &Path) {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.files.insert(key) {
            self.out.push(path.to_path_buf());
        }
    }

    fn dir(&mut self, path: &Path) {
        let real = match std::fs::canonicalize(path) {
            Ok(real) => real,
            Err(e) => {
                self.problems
                    .push(Problem::at(path, None, ProblemKind::Io, e.to_string()));
                return;
            }
        };
        if !self.dirs.insert(real) {
            return;
        }
        let mut entries = match std::fs::read_dir(path) {
            Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>(),
            Err(e) => {
                self.problems
                    .push(Problem::at(path, None, ProblemKind::Io, e.to_string()));
                return;
            }
        };
        entries.sort();
        for entry in entries {
            if entry.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            match std::fs::symlink_metadata(&entry) {
                Ok(m) if m.file_type().is_symlink() => self.links.push_back(entry),
                Ok(m) => self.entry(&entry, &m),
                Err(e) => self.problems.extend(unreadable(&entry, &e)),
            }
        }
    }

    /// A directory entry that is not a symlink (or a symlink's target).
    fn entry(&mut self, path: &Path, meta: &std::fs::Metadata) {
        if meta.is_dir() {
            self.dir(path);
        } else if !is_manifest_file(path) {
        } else if meta.is_file() {
            self.file(path);
        } else {
            let message = format!("{}, not a regular file; not read", special_file(meta));
            self.problems
                .push(Problem::at(path, None, ProblemKind::NotAFile, message));
        }
    }

    /// The symlinks met so far, and those met below them, after every real path.
    fn follow_links(&mut self) {
        while let Some(link) = self.links.pop_front() {
            let meta = match std::fs::metadata(&link) {
                Ok(meta) => meta,
                // A manifest we cannot stat; a dangling link to something else is no business of ours.
                Err(e) => {
                    self.problems.extend(unreadable(&link, &e));
                    continue;
                }
            };
            if meta.is_dir() {
                let target = std::fs::canonicalize(&link).ok();
                let home = link.parent().and_then(|p| std::fs::canonicalize(p).ok());
                if let (Some(target), Some(home)) = (target, home)
                    && home.starts_with(&target)
                {
                    let message = format!(
                        "a symlink to {}, which contains it (a loop); not followed",
                        target.display()
                    );
                    self.problems.push(Problem::at(&link, None, ProblemKind::Loop, message));
                    continue;
                }
            }
            self.entry(&link, &meta);
        }
    }
}

/// What a file that is not a regular file or a directory is, in words.
fn special_file(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

/// Reads every document it can from the given paths (`-` is stdin). A path
/// given that does not exist is an error; whatever below it cannot be read is a
/// [`Problem`], reported once per file, and the rest is still read.
pub fn read(paths: &[PathBuf]) -> Result<Loaded, ManifestError> {
    let mut walk = Walk::default();
    for path in paths {
        if path.as_os_str() == "-" {
            walk.out.push(path.clone());
            continue;
        }
        // A path given by name is read whatever it is: `-f <(kustomize build)` is a pipe.
        let meta = std::fs::metadata(path).map_err(io_error(path))?;
        if meta.is_dir() {
            walk.dir(path);
        } else {
            walk.file(path);
        }
    }
    walk.follow_links();
    let mut loaded = Loaded {
        docs: Vec::new(),
        problems: std::mem::take(&mut walk.problems),
        raw: Vec::new(),
    };
    // Templates of a chart are reported once, as the chart.
    let mut charts: std::collections::BTreeMap<PathBuf, usize> = Default::default();
    for file in walk.out {
        let text = if file.as_os_str() == "-" {
            let bytes = bounded(std::io::stdin()).map_err(io_error(&file))?;
            text_of(&file, bytes)
        } else {
            read_text(&file)
        };
        let text = match text {
            Ok(text) => text,
            Err(p) => {
                loaded.problems.push(p);
                continue;
            }
        };
        if let Some(chart) = chart_of(&file) {
            *charts.entry(chart).or_default() += 1;
            continue;
        }
        let (docs, problem, raw) = parse_with_raw(&file.display().to_string(), &text, loaded.raw.len());
        loaded.docs.extend(docs);
        loaded.raw.extend(raw);
        if let Some(mut p) = problem {
            let dir = file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if p.hint.is_none() && dir.join("kustomization.yaml").is_file() {
                p.hint = Some(format!(
                    "it belongs to a kustomization: `kustomize build {} | distroless-guard check -f -`",
                    dir.display()
                ));
            }
            loaded.problems.push(p);
        }
    }
    for (chart, templates) in charts {
        let chart = chart.display().to_string();
        loaded.problems.push(Problem {
            hint: Some(format!(
                "render it first: `check --helm {chart}`, or `helm template {chart} | distroless-guard check -f -`"
            )),
            ..Problem::new(
                &chart,
                None,
                ProblemKind::Template,
                format!("a Helm chart; its {templates} template files are not manifests until rendered"),
            )
        });
    }
    Ok(loaded)
}

/// Reads what `helm template` printed: each document is named after the
/// template it came from (its `# Source:` comment), lines counted within it.
pub fn read_rendered(chart: &str, text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    for (_, body) in split_documents(text) {
        let source = body
            .lines()
            .find_map(|l| l.strip_prefix("# Source: "))
            .map_or_else(|| chart.to_string(), |s| format!("{chart} ({})", s.trim()));
        let (docs, problem, raw) = parse_with_raw(&source, &body, loaded.raw.len());
        loaded.docs.extend(docs);
        loaded.problems.extend(problem);
        loaded.raw.extend(raw);
    }
    loaded
}

/// Reads every document from the given paths; the first file that cannot be
/// read is an error (for policies, where half a set would be wrong).
pub fn load(paths: &[PathBuf]) -> Result<Vec<Document>, ManifestError> {
    let loaded = read(paths)?;
    match loaded.problems.into_iter().next() {
        Some(p) => Err(ManifestError::Unreadable(Box::new(p))),
        None => Ok(loaded.docs),
    }
}

/// The chart a file is a template of: it is below `templates/` beside a `Chart.yaml`.
fn chart_of(file: &Path) -> Option<PathBuf> {
    file.ancestors()
        .skip(1)
        .filter(|a| a.file_name().is_some_and(|n| n == "templates"))
        .filter_map(Path::parent)
        .find(|chart| {
            let chart = if chart.as_os_str().is_empty() {
                Path::new(".")
            } else {
                chart
            };
            chart.join("Chart.yaml").is_file()
        })
        .map(|chart| {
            if chart.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                chart.to_path_buf()
            }
        })
}

/// A file's text, within [`MAX_FILE_BYTES`], or what is wrong with it.
fn read_text(path: &Path) -> Result<String, Problem> {
    let io = |e: std::io::Error| Problem::at(path, None, ProblemKind::Io, e.to_string());
    let file = std::fs::File::open(path).map_err(io)?;
    text_of(path, bounded(file).map_err(io)?)
}

/// What `reader` holds, up to one byte past [`MAX_FILE_BYTES`]: enough for
/// [`text_of`] to tell a file over the limit without reading all of it.
fn bounded(reader: impl Read) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn text_of(path: &Path, bytes: Vec<u8>) -> Result<String, Problem> {
    let line_at = |bytes: &[u8], offset: usize| 1 + bytes[..offset].iter().filter(|b| **b == b'\n').count();
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let message = format!(
            "larger than {} MiB, the limit for a manifest file",
            MAX_FILE_BYTES >> 20
        );
        return Err(Problem::at(path, None, ProblemKind::Limit, message));
    }
    // Editors on Windows save UTF-16 with a byte-order mark; UTF-8 may carry one too.
    let bytes = match bytes.as_slice() {
        [0xEF, 0xBB, 0xBF, ..] => bytes[3..].to_vec(),
        [0xFF, 0xFE, rest @ ..] => return utf16(path, rest, u16::from_le_bytes),
        [0xFE, 0xFF, rest @ ..] => return utf16(path, rest, u16::from_be_bytes),
        _ => bytes,
    };
    if let Some(nul) = bytes.iter().position(|b| *b == 0) {
        // ASCII text in UTF-16 without a byte-order mark: every other byte is NUL.
        if bytes.len() >= 4 && bytes.iter().skip(nul % 2).step_by(2).all(|b| *b == 0) {
            return Err(Problem::at(
                path,
                None,
                ProblemKind::Binary,
                "UTF-16 text without a byte-order mark; save it as UTF-8 (or UTF-16 with a BOM)",
            ));
        }
        return Err(Problem::at(
            path,
            Some(line_at(&bytes, nul)),
            ProblemKind::Binary,
            "a binary file (a NUL byte), not YAML or JSON",
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let line = line_at(e.as_bytes(), e.utf8_error().valid_up_to());
        Problem::at(
            path,
            Some(line),
            ProblemKind::Binary,
            "not UTF-8 text (an invalid byte on this line)",
        )
    })
}

/// UTF-16 text (after its byte-order mark) as a string.
fn utf16(path: &Path, bytes: &[u8], unit: fn([u8; 2]) -> u16) -> Result<String, Problem> {
    let bad = |line: Option<usize>, what: &str| {
        Err(Problem::at(
            path,
            line,
            ProblemKind::Binary,
            format!("UTF-16 text with {what}"),
        ))
    };
    if !bytes.len().is_multiple_of(2) {
        return bad(None, "an odd number of bytes");
    }
    let units = bytes.chunks_exact(2).map(|pair| unit([pair[0], pair[1]]));
    let mut text = String::with_capacity(bytes.len() / 2);
    for c in char::decode_utf16(units) {
        let line = || Some(1 + text.matches('\n').count());
        match c {
            Ok('\0') => return bad(line(), "a NUL character"),
            Ok(c) => text.push(c),
            Err(_) => return bad(line(), "an unpaired surrogate"),
        }
    }
    Ok(text)
}

/// Splits YAML text into documents at `---` lines, remembering where each starts.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_separator || line == "..." {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 1;
            // `--- {inline}` keeps its content on the separator line.
            if let Some(rest) = line.strip_prefix("---").filter(|r| !r.trim().is_empty()) {
                current.push_str(rest);
            }
            current.push('\n');
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

/// Parses one file's text into documents; the first unreadable document is an error.
pub fn parse(source: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    match parse_lenient(source, text) {
        (docs, None) => Ok(docs),
        (_, Some(p)) => Err(ManifestError::Unreadable(Box::new(p))),
    }
}

/// Whether a line holds a template action (`{{ ... }}`) outside a comment.
fn has_template_action(text: &str) -> bool {
    text.lines()
        .any(|l| !l.trim_start().starts_with('#') && l.contains("{{") && l.contains("}}"))
}

/// A parser error as one line, without its position (the caller gives `file:line`),
/// and whether a reader limit was what stopped it.
fn describe_parse_error(e: &serde_saphyr::Error) -> (ProblemKind, String) {
    use serde_saphyr::MessageFormatter;
    if let Some(what) = limit_breached(e) {
        return (ProblemKind::Limit, format!("over the reader's limits: {what}"));
    }
    // serde-saphyr's wording for users: no position (ours comes from the
    // error's location), no advice meant for programmers using the parser.
    // It quotes the file (a duplicate key), and only its renderers escape
    // control characters: a key must not move the terminal's cursor.
    let mut message = String::new();
    for c in serde_saphyr::UserMessageFormatter.format_message(e).chars() {
        if c.is_control() {
            message.extend(c.escape_debug());
        } else {
            message.push(c);
        }
    }
    (ProblemKind::Syntax, message)
}

/// Which of the reader's limits stopped it, from serde-saphyr's own error
/// type (never from its wording).
fn limit_breached(mut e: &serde_saphyr::Error) -> Option<&'static str> {
    use serde_saphyr::Error;
    use serde_saphyr::budget::BudgetBreach;
    while let Error::WithSnippet { error, .. } | Error::AliasError { error, .. } = e {
        e = error;
    }
    // The flow-collection nesting limit is the parser's own.
    if let Error::ExternalMessage { source, .. } = e
        && let serde_saphyr::ExternalMessageSource::Parser(scan) = source.as_ref()
        && matches!(
            scan.kind(),
            serde_saphyr::granit_parser::ErrorKind::RecursionLimitExceeded
        )
    {
        return Some("collections nested more than 64 deep");
    }
    let Error::Budget { breach, .. } = e else {
        return None;
    };
    Some(match breach {
        BudgetBreach::Depth { .. } => "collections nested more than 64 deep",
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => {
            "more than 2,000,000 nodes (keys, values, items) in one document"
        }
        BudgetBreach::Aliases { .. }
        | BudgetBreach::Anchors { .. }
        | BudgetBreach::AliasAnchorRatio { .. }
        | BudgetBreach::RecordedAnchorEvents { .. }
        | BudgetBreach::RecordedAnchorBytes { .. } => {
            "more than 50,000 aliases or anchors, or aliases expanding far beyond their anchors (a \"billion laughs\")"
        }
        BudgetBreach::MergeKeys { .. } => "more than 10,000 merge keys (<<)",
        BudgetBreach::ScalarBytes { .. } => "more than 64 MiB of scalar text",
        _ => "too many YAML documents, includes or property expansions",
    })
}

/// A `List`, `PodList`, `DeploymentList`, ...: `kind` ending in `List` and an `items` array.
fn is_list(value: &Value) -> bool {
    value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && value.get("items").is_some_and(Value::is_array)
}

/// The JSON pointers of a `List`'s objects, in the order they are read as
/// documents (the items of a `List` inside it in its place, as deep as the
/// YAML reader's own nesting limit allows).
pub fn list_item_pointers(list: &Value) -> Vec<String> {
    fn walk(list: &Value, at: &str, out: &mut Vec<String>, depth: usize) {
        let Some(items) = list.get("items").and_then(Value::as_array) else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let pointer = format!("{at}/items/{i}");
            if is_list(item) && depth < 64 {
                walk(item, &pointer, out, depth + 1);
            } else if item.is_object() {
                out.push(pointer);
            }
        }
    }
    let mut out = Vec::new();
    walk(list, "", &mut out, 0);
    out
}

/// Puts the fixed objects back into a `List` where [`list_item_pointers`] found them.
pub fn replace_list_items(list: &mut Value, fixed: &mut impl Iterator<Item = Value>) -> Option<()> {
    for pointer in list_item_pointers(list) {
        *list.pointer_mut(&pointer)? = fixed.next()?;
    }
    Some(())
}

/// Parses one file's text into the documents that read, and the first problem.
/// Documents that are not mappings with a `kind` (values files, CI workflows)
/// are skipped silently; `kind: List` is flattened. YAML broken by template
/// actions makes the whole file a template, none of it read.
pub fn parse_lenient(source: &str, text: &str) -> (Vec<Document>, Option<Problem>) {
    let (docs, problem, _) = parse_with_raw(source, text, 0);
    (docs, problem)
}

/// [`parse_lenient`], and every YAML document's text (numbered from `first_raw`).
fn parse_with_raw(source: &str, text: &str, first_raw: usize) -> (Vec<Document>, Option<Problem>, Vec<RawDocument>) {
    let mut docs = Vec::new();
    let mut problem: Option<Problem> = None;
    let mut raws = Vec::new();
    for (start, body) in split_documents(text) {
        let raw = first_raw + raws.len();
        if body.trim().is_empty() {
            continue;
        }
        // The separator's own line break is not the document's.
        let written = if start > 1 {
            body.strip_prefix('\n').unwrap_or(&body)
        } else {
            &body
        };
        raws.push(RawDocument {
            source: source.to_string(),
            text: written.to_string(),
            list: false,
        });
        // Where the object itself starts: past leading blank and comment lines.
        let Some(skipped) = body.lines().position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        }) else {
            continue;
        };
        let value: Value = match serde_saphyr::from_str_with_options(&body, yaml_options()) {
            Ok(value) => value,
            Err(e) => {
                if problem.is_none() {
                    let line = start
                        + e.location()
                            .map_or(skipped, |l| usize::try_from(l.line()).unwrap_or(0).saturating_sub(1));
                    let (kind, message) = describe_parse_error(&e);
                    problem = Some(Problem::new(source, Some(line), kind, message));
                }
                continue;
            }
        };
        let Value::Object(object) = &value else { continue };
        if !object.get("kind").is_some_and(Value::is_string) {
            continue;
        }
        if is_list(&value) {
            if let Some(r) = raws.last_mut() {
                r.list = true;
            }
            let items = list_item_pointers(&value);
            docs.extend(items.iter().filter_map(|at| value.pointer(at)).map(|item| Document {
                source: source.to_string(),
                line: start + skipped,
                value: item.clone(),
                raw,
                changed: false,
                fixes: Vec::new(),
            }));
        } else {
            docs.push(Document {
                source: source.to_string(),
                line: start + skipped,
                value,
                raw,
                changed: false,
                fixes: Vec::new(),
            });
        }
    }
    if let Some(p) = problem
        .as_mut()
        .filter(|p| p.kind == ProblemKind::Syntax && has_template_action(text))
    {
        p.kind = ProblemKind::Template;
        p.message = format!("a template, not YAML yet ({})", p.message);
        p.hint = Some("render it first (`helm template`, or the tool that owns it) and check the output".into());
        docs.clear();
    }
    (docs, problem, raws)
}

/// Why policy files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{location}: not a valid DistrolessPolicy: {source}")]
    Invalid {
        location: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no DistrolessPolicy found in {0}")]
    None(String),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

/// Loads DistrolessPolicy objects from files; the built-in default when none are given.
pub fn load_policies(paths: &[PathBuf]) -> Result<crate::policy::PolicySet, PolicyFileError> {
    if paths.is_empty() {
        return Ok(crate::policy::PolicySet::builtin_default());
    }
    let docs = load(paths)?;
    let policies = docs
        .iter()
        .filter(|d| d.kind() == "DistrolessPolicy")
        .map(|d| {
            serde_json::from_value::<crate::api::DistrolessPolicy>(d.value.clone()).map_err(|source| {
                PolicyFileError::Invalid {
                    location: d.location(),
                    source,
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if policies.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(PolicyFileError::None(names.join(", ")));
    }
    Ok(crate::policy::PolicySet::new(&policies)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_split_and_keep_their_start_lines() {
        let text =
            "# leading comment\napiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: Service\n---\n# only a comment\n";
        let docs = parse("x.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].line, docs[0].kind()), (2, "Pod"));
        assert_eq!((docs[1].line, docs[1].kind()), (5, "Service"));
        // A separator may carry a comment after a space or a tab, or the
        // document itself; `...` ends a document.
        let text = "kind: Pod\n--- # a\nkind: Service\n---\t# b\nkind: Secret\n...\nkind: Job\n--- {kind: ConfigMap}\n";
        let docs = parse("x.yaml", text).unwrap();
        let found: Vec<(usize, &str)> = docs.iter().map(|d| (d.line, d.kind())).collect();
        assert_eq!(
            found,
            [(1, "Pod"), (3, "Service"), (5, "Secret"), (7, "Job"), (8, "ConfigMap")]
        );
    }

    #[test]
    fn a_document_of_empty_collections_reads_while_its_nodes_are_within_the_limit() {
        // Each empty list is one node and two events (its start and end):
        // the event budget must leave room for twice as many events as nodes.
        let lists = 1_100_000;
        let text = format!("kind: List\nitems:\n{}", "- []\n".repeat(lists));
        assert!(lists < MAX_NODES && 2 * lists > MAX_NODES);
        let (docs, problem) = parse_lenient("big.yaml", &text);
        assert!(problem.is_none(), "{problem:?}");
        assert_eq!(docs.len(), 0, "a List of lists holds no objects");
    }

    #[test]
    fn a_document_past_a_limit_of_the_reader_is_a_limit_problem_that_names_that_limit() {
        use serde_saphyr::budget::BudgetBreach;
        let limit = |text: &str| {
            let (_, problem) = parse_lenient("big.yaml", text);
            let p = problem.expect("over a limit");
            (p.kind, p.message)
        };
        let nested: String = (0..70).map(|depth| format!("{}a:\n", "  ".repeat(depth))).collect();
        assert_eq!(
            limit(&format!("{nested}{}b: 1\n", "  ".repeat(70))),
            (
                ProblemKind::Limit,
                "over the reader's limits: collections nested more than 64 deep".to_string()
            )
        );
        // Real breaches of the other budgets take seconds to build (or
        // megabytes); serde-saphyr's typed errors, as its parser returns them.
        let nodes = "more than 2,000,000 nodes (keys, values, items) in one document";
        let laughs =
            "more than 50,000 aliases or anchors, or aliases expanding far beyond their anchors (a \"billion laughs\")";
        for (breach, want) in [
            (BudgetBreach::Nodes { nodes: MAX_NODES + 1 }, nodes),
            (
                BudgetBreach::Events {
                    events: 2 * MAX_NODES + 1,
                },
                nodes,
            ),
            (BudgetBreach::Aliases { aliases: 50_001 }, laughs),
            (
                BudgetBreach::RecordedAnchorEvents {
                    recorded_anchor_events: 250_001,
                },
                laughs,
            ),
            (
                BudgetBreach::MergeKeys { merge_keys: 10_001 },
                "more than 10,000 merge keys (<<)",
            ),
            (
                BudgetBreach::ScalarBytes {
                    total_scalar_bytes: 64 << 20,
                },
                "more than 64 MiB of scalar text",
            ),
            (
                BudgetBreach::Documents { documents: 1 },
                "too many YAML documents, includes or property expansions",
            ),
        ] {
            let e = serde_saphyr::Error::Budget {
                breach,
                location: serde_saphyr::Location::UNKNOWN,
            };
            assert_eq!(limit_breached(&e), Some(want));
        }
    }

    #[test]
    fn a_directory_is_read_for_its_yaml_and_json_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let pod = |kind: &str| format!("apiVersion: v1\nkind: {kind}\nmetadata: {{name: x}}\n");
        std::fs::write(dir.path().join("a.yaml"), pod("Pod")).unwrap();
        std::fs::write(dir.path().join("b.yml"), pod("Service")).unwrap();
        std::fs::write(
            dir.path().join("c.json"),
            r#"{"apiVersion": "v1", "kind": "ConfigMap"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("logo.png"), b"\x89PNG\r\n\x1a\n\0\0\0").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "kind: [not yaml").unwrap();
        let loaded = read(&[dir.path().to_path_buf()]).unwrap();
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let kinds: Vec<&str> = loaded.docs.iter().map(Document::kind).collect();
        assert_eq!(kinds, ["Pod", "Service", "ConfigMap"]);
    }

    #[test]
    fn a_file_that_cannot_be_looked_at_is_a_problem_only_when_named_like_a_manifest() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let p = unreadable(Path::new("deploy/web.yaml"), &denied).expect("a manifest");
        assert_eq!((p.kind, p.path.as_str()), (ProblemKind::Io, "deploy/web.yaml"));
        assert!(unreadable(Path::new("deploy/logo.png"), &denied).is_none());
    }

    #[test]
    fn a_device_named_like_a_manifest_is_reported_as_a_device_and_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("null.yaml")).unwrap();
        let loaded = read(&[dir.path().to_path_buf()]).unwrap();
        let messages: Vec<(ProblemKind, &str)> = loaded.problems.iter().map(|p| (p.kind, p.message.as_str())).collect();
        assert_eq!(
            messages,
            [(ProblemKind::NotAFile, "a device, not a regular file; not read")]
        );
    }

    #[test]
    fn a_file_is_text_up_to_the_size_limit_and_a_byte_past_it_is_too_large() {
        let path = Path::new("f.yaml");
        let limit = usize::try_from(MAX_FILE_BYTES).unwrap();
        let at_limit = text_of(path, vec![b'#'; limit]).unwrap();
        assert_eq!(at_limit.len(), limit);
        let past = text_of(path, vec![b'#'; limit + 1]).unwrap_err();
        assert_eq!(past.kind, ProblemKind::Limit);
        assert_eq!(past.message, "larger than 32 MiB, the limit for a manifest file");
    }

    #[test]
    fn a_utf8_byte_order_mark_is_not_part_of_the_text() {
        let text = text_of(Path::new("f.yaml"), b"\xEF\xBB\xBFkind: Pod\n".to_vec()).unwrap();
        assert_eq!(text, "kind: Pod\n");
    }

    #[test]
    fn a_nul_byte_is_utf16_only_when_every_other_byte_from_its_side_is_nul() {
        let text_of = |bytes: &[u8]| text_of(Path::new("f.yaml"), bytes.to_vec()).unwrap_err();
        let bare: Vec<u8> = "kind: Pod\n".encode_utf16().flat_map(u16::to_le_bytes).collect();
        let utf16 = text_of(&bare);
        assert_eq!((utf16.kind, utf16.line), (ProblemKind::Binary, None));
        assert!(
            utf16.message.starts_with("UTF-16 text without a byte-order mark"),
            "{}",
            utf16.message
        );
        // Text, then NULs: the bytes before the first NUL, on its side, are
        // not NUL, so this is a binary file (of even and of odd length).
        for bytes in [&b"kind: Pod\n\0\x01"[..], b"kind: x\0\0\0\0", b"kind: x\0\0\0\0\0"] {
            let binary = text_of(bytes);
            assert_eq!(binary.kind, ProblemKind::Binary, "{bytes:?}");
            assert!(
                binary.message.starts_with("a binary file (a NUL byte)"),
                "{bytes:?}: {}",
                binary.message
            );
        }
        assert_eq!(text_of(b"kind: Pod\n\0\x01").line, Some(2));
    }

    #[test]
    fn utf16_with_a_byte_order_mark_names_the_line_of_a_nul_or_an_unpaired_surrogate() {
        let le = |units: &[u16]| -> Vec<u8> {
            [0xFF, 0xFE]
                .into_iter()
                .chain(units.iter().flat_map(|u| u.to_le_bytes()))
                .collect()
        };
        let error = |bytes: Vec<u8>| {
            let p = text_of(Path::new("f.yaml"), bytes).unwrap_err();
            (p.kind, p.line, p.message)
        };
        let mut units: Vec<u16> = "kind: Pod\nmetadata:\n".encode_utf16().collect();
        assert_eq!(
            text_of(Path::new("f.yaml"), le(&units)).unwrap(),
            "kind: Pod\nmetadata:\n"
        );
        let mut nul = units.clone();
        nul.push(0);
        assert_eq!(
            error(le(&nul)),
            (
                ProblemKind::Binary,
                Some(3),
                "UTF-16 text with a NUL character".to_string()
            )
        );
        units.truncate("kind: Pod\nme".len());
        units.push(0xD800);
        assert_eq!(
            error(le(&units)),
            (
                ProblemKind::Binary,
                Some(2),
                "UTF-16 text with an unpaired surrogate".to_string()
            )
        );
        let mut odd = le(&units[..2]);
        odd.push(b'x');
        assert_eq!(
            error(odd),
            (
                ProblemKind::Binary,
                None,
                "UTF-16 text with an odd number of bytes".to_string()
            )
        );
    }

    #[test]
    fn a_lists_items_carry_the_line_its_object_starts_on_past_comments_and_blank_lines() {
        let text =
            "kind: Pod\n---\n# the list\n\napiVersion: v1\nkind: List\nitems:\n- {kind: Pod}\n- {kind: Service}\n";
        let docs = parse("l.yaml", text).unwrap();
        let found: Vec<(usize, &str)> = docs.iter().map(|d| (d.line, d.kind())).collect();
        assert_eq!(found, [(1, "Pod"), (5, "Pod"), (5, "Service")]);
    }

    #[test]
    fn lists_are_flattened() {
        let kinds = |text: &str| -> Vec<String> {
            parse("l.yaml", text)
                .unwrap()
                .iter()
                .map(|d| d.kind().to_string())
                .collect()
        };
        assert_eq!(
            kinds(
                "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod}\n- {apiVersion: apps/v1, kind: Deployment}\n"
            ),
            ["Pod", "Deployment"]
        );
        // A List needs both: a kind ending in List, and items that are a list.
        assert_eq!(
            kinds("kind: PodList\nitems: {a: {kind: Pod}}\n---\nkind: Foo\nitems:\n- {kind: Pod}\n"),
            ["PodList", "Foo"]
        );
    }

    #[test]
    fn lists_nested_past_64_deep_are_not_opened_further() {
        // The YAML reader stops nesting first; a List built another way is
        // walked 64 levels down and no further.
        let mut value = serde_json::json!({"apiVersion": "v1", "kind": "Pod"});
        for _ in 0..70 {
            value = serde_json::json!({"kind": "List", "items": [value]});
        }
        assert_eq!(list_item_pointers(&value), ["/items/0".repeat(65)]);
        let shallow = serde_json::json!({"kind": "List", "items": [{"kind": "List", "items": [{"kind": "Pod"}, 1]}, {"kind": "Service"}]});
        assert_eq!(list_item_pointers(&shallow), ["/items/0/items/0", "/items/1"]);
    }

    #[test]
    fn each_documents_raw_text_is_as_written_with_a_leading_blank_line_kept_and_no_separator() {
        let text = "\nkind: Pod\n---\nkind: Service\n";
        let (docs, problem, raw) = parse_with_raw("x.yaml", text, 0);
        assert!(problem.is_none(), "{problem:?}");
        assert_eq!(docs.len(), 2);
        let written: Vec<&str> = raw.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(written, ["\nkind: Pod\n", "kind: Service\n"]);
    }

    #[test]
    fn parse_errors_name_the_file_and_the_line_in_the_file() {
        let text = "apiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n";
        let err = parse("bad.yaml", text).unwrap_err().to_string();
        assert!(err.starts_with("bad.yaml:"), "{err}");
        let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
        assert!((7..=8).contains(&line), "{err}");
    }

    #[test]
    fn a_syntax_error_is_described_in_the_parsers_words_for_users_without_its_position() {
        let message = |text: &str| {
            let e = serde_saphyr::from_str_with_options::<serde_json::Value>(text, yaml_options()).unwrap_err();
            describe_parse_error(&e)
        };
        let syntax = |m: &str| (ProblemKind::Syntax, m.to_string());
        assert_eq!(message("a: [unclosed\n"), syntax("unclosed bracket '['"));
        assert_eq!(
            message("a: 1\na: 2\n"),
            syntax("duplicate mapping key `a` is not allowed here")
        );
        assert_eq!(
            message("a: b: c\n"),
            syntax("mapping values are not allowed in this context")
        );
        assert_eq!(
            message("a:\n\t- x\n"),
            syntax("tabs disallowed within this context (block indentation)")
        );
        // Quoted from the file, with its control characters escaped.
        assert_eq!(
            message("\"a\\nb\\e[31m\": 1\n\"a\\nb\\e[31m\": 2\n"),
            syntax("duplicate mapping key `a\\nb\\u{1b}[31m` is not allowed here")
        );
    }

    #[test]
    fn json_files_parse_too() {
        let docs = parse(
            "p.json",
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}"#,
        )
        .unwrap();
        assert_eq!(docs[0].kind(), "Pod");
    }

    #[test]
    fn yaml_that_is_not_a_kubernetes_object_is_skipped() {
        for text in ["just a string\n", "- a\n- b\n", "name: CI\non: [push]\n", "42\n"] {
            assert_eq!(parse_lenient("s.yaml", text), (vec![], None), "{text}");
        }
    }

    #[test]
    fn template_actions_make_a_broken_file_a_template_and_none_of_it_is_read() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\nkind: Pod\nmetadata:\n  name: {{ .Name }}\n";
        let (docs, problem) = parse_lenient("t.yaml", text);
        assert!(docs.is_empty());
        let p = problem.unwrap();
        assert_eq!((p.kind, p.line), (ProblemKind::Template, Some(7)));
        // A comment holding `{{` does not make a plain syntax error a template.
        let (_, p) = parse_lenient("s.yaml", "# {{ x }}\nkind: Pod\nmetadata: [oops\n");
        assert_eq!(p.unwrap().kind, ProblemKind::Syntax);
    }

    #[test]
    fn helm_output_names_each_object_after_its_template() {
        let text = "---\n# Source: app/templates/a.yaml\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n# Source: app/templates/b.yaml\nkind: Pod\nmetadata: [broken\n";
        let loaded = read_rendered("./app", text);
        assert_eq!(loaded.docs.len(), 1);
        assert_eq!(loaded.docs[0].location(), "./app (app/templates/a.yaml):3");
        assert_eq!(loaded.problems[0].path, "./app (app/templates/b.yaml)");
    }
}
