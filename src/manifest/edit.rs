//! `--fix` as an edit of the text: each mutation added as its own lines at the
//! place the YAML parser reports for the mapping it goes into (or the scalar
//! it replaces), everything else kept byte for byte: comments, quoting, flow
//! style, anchors, number forms. The parser is the one that reads the
//! manifests (serde-saphyr's granit-parser, events with byte spans), so no
//! second grammar: a field of a list item (`- name: app`) goes after the key on
//! the dash line; a flow mapping that gains a field is written again in flow
//! style. What this module cannot place (a list item with one key, an alias)
//! it declines, and the caller prints the document from
//! the fixed object instead. The caller also reads the edited text back and
//! keeps it only if it is exactly the fixed object.

use json_patch::PatchOperation;
use serde_json::Value;
use serde_saphyr::granit_parser::{Event, Parser, StructureStyle};

/// Where a node sits in the text.
struct Found {
    /// Byte offsets of the node (for a scalar: the scalar's own text).
    start: usize,
    end: usize,
    /// A block mapping: the byte offset of its first key's line and that key's column.
    first_key: Option<(usize, usize)>,
    /// A block mapping: the byte offset of its second key's line (the first
    /// may share its line with a `- `).
    second_key: Option<usize>,
    block_mapping: bool,
    plain_scalar: bool,
}

enum Frame {
    Map { key: Option<String>, awaiting_key: bool },
    Seq { index: usize },
}

/// The node at a JSON pointer's tokens, from the parser's events.
fn find(text: &str, target: &[String]) -> Option<Found> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    // The depth of the target mapping while it is open.
    let mut open: Option<(usize, Found)> = None;
    let path = |stack: &[Frame]| -> Vec<String> {
        stack
            .iter()
            .map(|f| match f {
                Frame::Map { key, .. } => key.clone().unwrap_or_default(),
                Frame::Seq { index } => index.to_string(),
            })
            .collect()
    };
    let done_value = |stack: &mut Vec<Frame>| match stack.last_mut() {
        Some(Frame::Map { awaiting_key, .. }) => *awaiting_key = true,
        Some(Frame::Seq { index }) => *index += 1,
        None => {}
    };
    while let Some(event) = parser.next_event() {
        let (event, span) = event.ok()?;
        let start = span.start.byte_offset()?;
        let end = span.end.byte_offset()?;
        let is_key = matches!(stack.last(), Some(Frame::Map { awaiting_key: true, .. }));
        match event {
            Event::Scalar(value, ..) if is_key => {
                if let Some((depth, found)) = &mut open
                    && *depth == stack.len()
                {
                    let line_start = start - span.start.col();
                    match found.first_key {
                        None => found.first_key = Some((line_start, span.start.col())),
                        Some(_) if found.second_key.is_none() => found.second_key = Some(line_start),
                        Some(_) => {}
                    }
                }
                if let Some(Frame::Map { key, awaiting_key }) = stack.last_mut() {
                    *key = Some(value.into_owned());
                    *awaiting_key = false;
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) | Event::Alias(..) if is_key => return None,
            Event::Scalar(_, style, ..) => {
                if path(&stack) == target {
                    return Some(Found {
                        start,
                        end,
                        first_key: None,
                        second_key: None,
                        block_mapping: false,
                        plain_scalar: style == serde_saphyr::granit_parser::ScalarStyle::Plain,
                    });
                }
                done_value(&mut stack);
            }
            Event::Alias(..) => {
                if path(&stack) == target {
                    return None;
                }
                done_value(&mut stack);
            }
            Event::MappingStart(style, ..) => {
                if path(&stack) == target {
                    open = Some((
                        stack.len() + 1,
                        Found {
                            start,
                            end,
                            first_key: None,
                            second_key: None,
                            block_mapping: style == StructureStyle::Block,
                            plain_scalar: false,
                        },
                    ));
                }
                stack.push(Frame::Map {
                    key: None,
                    awaiting_key: true,
                });
            }
            Event::SequenceStart(..) => {
                if path(&stack) == target {
                    return None;
                }
                stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((depth, found)) = open.take() {
                    if depth == stack.len() {
                        return Some(Found { end: start, ..found });
                    }
                    open = Some((depth, found));
                }
                stack.pop();
                done_value(&mut stack);
            }
            _ => {}
        }
    }
    None
}

/// `key: value` as block YAML lines indented by `indent`.
fn block_lines(key: &str, value: &Value, indent: usize) -> Option<String> {
    let mut one = serde_json::Map::new();
    one.insert(key.to_string(), value.clone());
    let yaml = serde_saphyr::to_string(&Value::Object(one)).ok()?;
    let pad = " ".repeat(indent);
    Some(yaml.lines().map(|l| format!("{pad}{l}\n")).collect())
}

/// A value in YAML's flow style, on one line: `{runAsNonRoot: true, runAsUser: 65532}`.
fn flow(value: &Value) -> Option<String> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            // Flow indicators end a plain scalar: such a string is quoted.
            Value::String(s) if s.contains([',', '[', ']', '{', '}']) => serde_json::to_string(s).ok(),
            _ => Some(serde_saphyr::to_string(value).ok()?.trim_end().to_string()),
        }
    }
    match value {
        Value::Object(map) => {
            let fields: Option<Vec<String>> = map
                .iter()
                .map(|(k, v)| Some(format!("{}: {}", scalar(&Value::String(k.clone()))?, flow(v)?)))
                .collect();
            Some(format!("{{{}}}", fields?.join(", ")))
        }
        Value::Array(items) => {
            let items: Option<Vec<String>> = items.iter().map(flow).collect();
            Some(format!("[{}]", items?.join(", ")))
        }
        _ => scalar(value),
    }
}

/// One operation as an edit, or `None` when it cannot be placed.
fn apply_one(text: &str, op: &PatchOperation, fixed: &Value) -> Option<String> {
    let tokens: Vec<String> = op.path().tokens().map(|t| t.decoded().into_owned()).collect();
    let (last, parent) = tokens.split_last()?;
    match op {
        PatchOperation::Add(add) => {
            let found = find(text, parent)?;
            if !found.block_mapping {
                // A flow mapping (`securityContext: {runAsUser: 1000}`) is
                // written again, on its own line, as it is in the fixed object.
                if text.as_bytes().get(found.end) != Some(&b'}') {
                    return None;
                }
                let mapping = flow(fixed.pointer(op.path().parent()?.as_str())?)?;
                return Some(format!("{}{mapping}{}", &text[..found.start], &text[found.end + 1..]));
            }
            let (first, col) = found.first_key?;
            // Before the first key when it starts its line; after it when it
            // shares a line with `- ` (a container), before the second key.
            let starts_line = |at: usize| text.get(at..at + col).is_some_and(|p| p.bytes().all(|b| b == b' '));
            let at = [Some(first), found.second_key]
                .into_iter()
                .flatten()
                .find(|&at| starts_line(at))?;
            let lines = block_lines(last, &add.value, col)?;
            Some(format!("{}{lines}{}", &text[..at], &text[at..]))
        }
        PatchOperation::Replace(replace) if !replace.value.is_object() && !replace.value.is_array() => {
            let found = find(text, &tokens)?;
            if !found.plain_scalar {
                return None;
            }
            let scalar = serde_saphyr::to_string(&replace.value).ok()?;
            Some(format!(
                "{}{}{}",
                &text[..found.start],
                scalar.trim_end(),
                &text[found.end..]
            ))
        }
        _ => None,
    }
}

/// An operation on an object as the same operation on the object at `at`
/// (a `List`'s item).
pub(crate) fn rebase(op: &PatchOperation, at: &str) -> Option<PatchOperation> {
    let mut value = serde_json::to_value(op).ok()?;
    let path = value.get("path")?.as_str()?;
    value["path"] = Value::String(format!("{at}{path}"));
    serde_json::from_value(value).ok()
}

/// The text with every operation applied as its own lines (into a flow
/// mapping: that mapping as it is in `fixed`, the object after every
/// operation), or `None` when any cannot be placed. Applied last to first: each addition goes before
/// the first key of its mapping, so the fields of one mapping end up in the
/// operations' order (an operation that needs an earlier one's mapping is
/// then not placed, and the caller prints the fixed object instead).
pub(crate) fn apply(text: &str, ops: &[PatchOperation], fixed: &Value) -> Option<String> {
    ops.iter()
        .rev()
        .try_fold(text.to_string(), |text, op| apply_one(&text, op, fixed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(json: Value) -> Vec<PatchOperation> {
        serde_json::from_value(json).unwrap()
    }

    /// The text edited by `ops`, with the object they make.
    fn edit(text: &str, ops: &[PatchOperation]) -> Option<String> {
        let mut fixed: Value = serde_saphyr::from_str(text).unwrap();
        if json_patch::patch(&mut fixed, ops).is_err() {
            return apply(text, ops, &Value::Null);
        }
        apply(text, ops, &fixed)
    }

    #[test]
    fn a_security_context_is_added_as_its_own_lines_and_the_rest_is_kept_byte_for_byte() {
        let text = "# the web tier\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}  # inline\nspec:\n  template:\n    spec:\n      volumes:\n      - name: keys\n        secret: {secretName: keys, defaultMode: 0400}\n      containers:\n      - name: web\n        image: &img \"web:1\"\n";
        let edited = edit(
            text,
            &ops(
                serde_json::json!([{"op": "add", "path": "/spec/template/spec/securityContext",
                "value": {"runAsNonRoot": true, "runAsUser": 65532}}]),
            ),
        )
        .unwrap();
        assert_eq!(
            edited,
            text.replace(
                "    spec:\n      volumes:",
                "    spec:\n      securityContext:\n        runAsNonRoot: true\n        runAsUser: 65532\n      volumes:"
            )
        );
    }

    #[test]
    fn a_field_goes_into_an_existing_mapping_and_a_plain_scalar_is_replaced_in_place() {
        let text = "spec:\n  securityContext:\n    runAsUser: 1000 # app user\n  containers:\n  - name: a\n";
        let edited = edit(
            text,
            &ops(serde_json::json!([
                {"op": "add", "path": "/spec/securityContext/runAsNonRoot", "value": true},
                {"op": "replace", "path": "/spec/securityContext/runAsUser", "value": 65532}])),
        )
        .unwrap();
        assert_eq!(
            edited,
            "spec:\n  securityContext:\n    runAsNonRoot: true\n    runAsUser: 65532 # app user\n  containers:\n  - name: a\n"
        );
        let two = ops(serde_json::json!([
            {"op": "add", "path": "/spec/securityContext/runAsGroup", "value": 65532},
            {"op": "add", "path": "/spec/securityContext/fsGroup", "value": 65532}]));
        assert!(
            edit(text, &two)
                .unwrap()
                .contains("  securityContext:\n    runAsGroup: 65532\n    fsGroup: 65532\n    runAsUser: 1000"),
            "in the operations' order"
        );
    }

    #[test]
    fn a_field_of_a_list_item_goes_after_the_key_on_the_dash_line() {
        let text = "containers:\n- name: app # main\n  image: app:1\n- name: proxy\n  # the mesh\n  image: proxy:1\n";
        let edited = edit(
            text,
            &ops(serde_json::json!([
                {"op": "add", "path": "/containers/0/securityContext", "value": {"runAsUser": 65532}},
                {"op": "add", "path": "/containers/1/securityContext", "value": {"runAsUser": 1337}}])),
        )
        .unwrap();
        assert_eq!(
            edited,
            "containers:\n- name: app # main\n  securityContext:\n    runAsUser: 65532\n  image: app:1\n- name: proxy\n  # the mesh\n  securityContext:\n    runAsUser: 1337\n  image: proxy:1\n"
        );
    }

    #[test]
    fn a_flow_mapping_that_gains_a_field_is_written_again_in_flow_style_on_its_line() {
        let text = "spec:\n  securityContext: {runAsUser: 1000, seLinuxOptions: {level: \"s0:c1,c2\"}} # app\n  containers: [{name: a, image: b}]\n";
        let edited = edit(
            text,
            &ops(serde_json::json!([{"op": "add", "path": "/spec/securityContext/runAsNonRoot", "value": true}])),
        )
        .unwrap();
        assert_eq!(
            edited,
            "spec:\n  securityContext: {runAsUser: 1000, seLinuxOptions: {level: \"s0:c1,c2\"}, runAsNonRoot: true} # app\n  containers: [{name: a, image: b}]\n"
        );
    }

    #[test]
    fn what_cannot_be_placed_is_declined_not_guessed() {
        let add = |path: &str| ops(serde_json::json!([{"op": "add", "path": path, "value": 1}]));
        // A `- ` line's only key, a path that is not there.
        assert_eq!(edit("items:\n- name: a\n", &add("/items/0/x")), None);
        assert_eq!(edit("spec:\n  a: 1\n", &add("/nope/x")), None);
    }
}
