//! The inventory for people: a table for a terminal and one self-contained
//! HTML page (JSON is its serde form).

use super::{Inventory, State};

/// The inventory as a table for a terminal.
pub(crate) fn table(inv: &Inventory) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "NAMESPACE".into(),
        "WORKLOAD".into(),
        "STATE".into(),
        "IMAGES".into(),
        "WHY".into(),
        "NEXT STEP".into(),
    ]];
    for ns in &inv.namespaces {
        for w in &ns.workloads {
            let why: Vec<String> = w
                .images
                .iter()
                .flat_map(|i| i.why.iter().cloned())
                .chain(w.blockers.iter().map(|b| format!("[{}]", b.rule)))
                .collect();
            rows.push([
                ns.name.clone(),
                format!("{}/{}", w.kind.to_ascii_lowercase(), w.name),
                w.state.label().into(),
                w.images.iter().map(|i| i.image.clone()).collect::<Vec<_>>().join(","),
                why.join("; "),
                w.next_step.clone(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).min(60))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i < 5 {
                let cell: String = cell.chars().take(60).collect();
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let t = &inv.totals;
    out.push_str(&format!(
        "\n{} workloads: {} done, {} blocked by their spec, {} not distroless, {} not verified\n",
        t.workloads, t.done, t.spec_blocked, t.not_distroless, t.unverified
    ));
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One self-contained page (no script, no external resource): a progress
/// chart per namespace and a table per namespace.
pub(crate) fn html(inv: &Inventory) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Distroless migration inventory</title>\n<style>\n");
    h.push_str("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;width:100%;margin-bottom:2em}");
    h.push_str("th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}th{background:#eee}");
    h.push_str(".legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}code{font-size:13px}\n");
    for s in State::ALL {
        h.push_str(&format!(".s-{:?}{{color:{}}}\n", s, s.color()));
    }
    h.push_str("</style></head><body>\n<h1>Distroless migration inventory</h1>\n");
    let t = &inv.totals;
    h.push_str(&format!(
        "<p id=\"summary\">{} &middot; generated {} &middot; <strong>{} of {} workloads done</strong> ({} blocked by their spec, {} not distroless, {} not verified)</p>\n",
        esc(&inv.source),
        esc(&inv.generated_at),
        t.done,
        t.workloads,
        t.spec_blocked,
        t.not_distroless,
        t.unverified
    ));
    h.push_str("<p class=\"legend\">");
    for s in State::ALL {
        h.push_str(&format!(
            "<span style=\"background:{}\"></span>{}",
            s.color(),
            s.label()
        ));
    }
    h.push_str("</p>\n");
    // The chart: one stacked bar per namespace.
    let bar_width = 600.0;
    let row = 28;
    let height = row * inv.namespaces.len().max(1) + 10;
    h.push_str(&format!("<svg id=\"progress\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"migration progress per namespace\">\n", 200.0 + bar_width + 80.0));
    for (i, ns) in inv.namespaces.iter().enumerate() {
        let y = i * row + 5;
        h.push_str(&format!(
            "<text x=\"0\" y=\"{}\" font-size=\"14\">{}</text>\n",
            y + 16,
            esc(&ns.name)
        ));
        let mut x = 200.0;
        for s in State::ALL {
            let n = ns.counts.of(s);
            if n == 0 || ns.counts.workloads == 0 {
                continue;
            }
            let w = bar_width * n as f64 / ns.counts.workloads as f64;
            h.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"20\" fill=\"{}\"><title>{}: {n}</title></rect>\n",
                s.color(),
                s.label()
            ));
            x += w;
        }
        h.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"14\">{}/{}</text>\n",
            200.0 + bar_width + 8.0,
            y + 16,
            ns.counts.done,
            ns.counts.workloads
        ));
    }
    h.push_str("</svg>\n");
    for ns in &inv.namespaces {
        h.push_str(&format!("<h2>{}</h2>\n<table class=\"workloads\"><tr><th>Workload</th><th>State</th><th>Images</th><th>Blocking rules</th><th>Next step</th></tr>\n", esc(&ns.name)));
        for w in &ns.workloads {
            let images: Vec<String> = w
                .images
                .iter()
                .map(|i| {
                    format!(
                        "<code>{}</code> ({}): {}<br>{}",
                        esc(&i.image),
                        esc(&i.container),
                        esc(&i.verdict),
                        esc(&i.why.join("; "))
                    )
                })
                .collect();
            let blockers: Vec<String> = w
                .blockers
                .iter()
                .map(|b| format!("<code>[{}]</code> {}", esc(&b.rule), esc(&b.fix)))
                .collect();
            h.push_str(&format!(
                "<tr><td>{}/{}</td><td class=\"s-{:?}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&w.kind.to_ascii_lowercase()),
                esc(&w.name),
                w.state,
                w.state.label(),
                images.join("<br>"),
                blockers.join("<br>"),
                esc(&w.next_step)
            ));
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}
