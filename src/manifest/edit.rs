//! `--fix` as an edit of the text: each mutation added as its own lines at the
//! place the YAML parser reports for the mapping it goes into (or the scalar
//! it replaces), everything else kept byte for byte: comments, quoting, flow
//! style, anchors, number forms. The parser is the one that reads the
//! manifests (serde-saphyr's granit-parser, events with byte spans), so no
//! second grammar: what this module cannot place (a flow mapping, a key on a
//! `- ` line, an alias) it declines, and the caller prints the document from
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
                    && found.first_key.is_none()
                {
                    found.first_key = Some((start - span.start.col(), span.start.col()));
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

/// One operation as an edit, or `None` when it cannot be placed.
fn apply_one(text: &str, op: &PatchOperation) -> Option<String> {
    let tokens: Vec<String> = op.path().tokens().map(|t| t.decoded().into_owned()).collect();
    let (last, parent) = tokens.split_last()?;
    match op {
        PatchOperation::Add(add) => {
            let found = find(text, parent)?;
            let (line_start, col) = found.first_key.filter(|_| found.block_mapping)?;
            // Only a key that starts its line (not `- key: value`, not `{...}`).
            if !text[line_start..line_start + col].bytes().all(|b| b == b' ') {
                return None;
            }
            let lines = block_lines(last, &add.value, col)?;
            Some(format!("{}{lines}{}", &text[..line_start], &text[line_start..]))
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

/// The text with every operation applied as its own lines, or `None` when
/// any cannot be placed. Applied last to first: each addition goes before
/// the first key of its mapping, so the fields of one mapping end up in the
/// operations' order (an operation that needs an earlier one's mapping is
/// then not placed, and the caller prints the fixed object instead).
pub(crate) fn apply(text: &str, ops: &[PatchOperation]) -> Option<String> {
    ops.iter()
        .rev()
        .try_fold(text.to_string(), |text, op| apply_one(&text, op))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(json: Value) -> Vec<PatchOperation> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_security_context_is_added_as_its_own_lines_and_the_rest_is_kept_byte_for_byte() {
        let text = "# the web tier\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}  # inline\nspec:\n  template:\n    spec:\n      volumes:\n      - name: keys\n        secret: {secretName: keys, defaultMode: 0400}\n      containers:\n      - name: web\n        image: &img \"web:1\"\n";
        let edited = apply(
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
        let edited = apply(
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
            apply(text, &two)
                .unwrap()
                .contains("  securityContext:\n    runAsGroup: 65532\n    fsGroup: 65532\n    runAsUser: 1000"),
            "in the operations' order"
        );
    }

    #[test]
    fn what_cannot_be_placed_is_declined_not_guessed() {
        let add = |path: &str| ops(serde_json::json!([{"op": "add", "path": path, "value": 1}]));
        // A flow mapping, a key on a `- ` line, a path that is not there.
        assert_eq!(apply("spec: {containers: []}\n", &add("/spec/x")), None);
        assert_eq!(apply("items:\n- name: a\n  image: b\n", &add("/items/0/x")), None);
        assert_eq!(apply("spec:\n  a: 1\n", &add("/nope/x")), None);
    }
}
