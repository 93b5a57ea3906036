//! What a manifests file must meet before it is parsed: a size (`--manifests-max-file-size`,
//! 64 MiB by default: a file larger than memory got kproxy killed after every restart) and a
//! nesting depth (`MAX_DEPTH` levels of block or flow collections: parse time grew
//! super-linearly with depth, 13 s for a 140 KB file of nested lists, while the source waited).
//! With both, a file's parse takes time linear in its size.
//!
//! Invariants: `too_deep` is one linear pass over the text and never allocates per line; it
//! overestimates nothing a Kubernetes object uses (they nest ~15 levels) beyond one level per
//! block collection, and it may underestimate (a sequence indented like its parent key counts
//! once), so a refused file is surely deeper than the parser should meet.

/// The default of `--manifests-max-file-size`.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 << 20;
/// The deepest nesting of collections a manifest may have.
pub const MAX_DEPTH: usize = 64;

/// The 1-based line at which `text` (YAML or JSON) nests collections deeper than `limit`, if
/// it does: block collections by indentation (and `- - x` compact sequences), flow collections
/// by their brackets outside quotes; comments and block scalars' contents are skipped.
pub fn too_deep(text: &str, limit: usize) -> Option<usize> {
    let mut stack: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut scalar_parent: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        if let Some(parent) = scalar_parent {
            if body.trim().is_empty() || indent > parent {
                continue;
            }
            scalar_parent = None;
        }
        let mut rest = body;
        if flow == 0 {
            if body.is_empty() || body.starts_with('#') || is_marker(body) {
                continue;
            }
            while stack.last().is_some_and(|&i| i >= indent) {
                stack.pop();
            }
            stack.push(indent);
        }
        // `- - x`: the first sequence is the indentation level's, each further one nests.
        let mut compact = 0usize;
        while let Some(r) = rest.strip_prefix("- ").or((rest == "-").then_some("")) {
            compact += 1;
            rest = r.trim_start_matches(' ');
        }
        let (deepest, end) = flow_depth(rest, &mut flow);
        if stack.len() + compact.saturating_sub(1) + deepest > limit {
            return Some(n + 1);
        }
        let content = rest[..end].trim_end();
        if flow == 0 && opens_block_scalar(content) {
            scalar_parent = Some(indent);
        }
    }
    None
}

fn is_marker(body: &str) -> bool {
    ["---", "..."].iter().any(|m| {
        body.strip_prefix(m)
            .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']))
    })
}

/// Walks one line's flow brackets outside quotes, updating `flow`: the deepest level reached
/// on the line, and where its comment starts (or its length).
fn flow_depth(rest: &str, flow: &mut usize) -> (usize, usize) {
    let mut deepest = *flow;
    let mut quote: Option<u8> = None;
    let bytes = rest.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"') => quote = Some(b'"'),
            (None, b'\'') if i == 0 || !bytes[i - 1].is_ascii_alphanumeric() => quote = Some(b'\''),
            (None, b'[' | b'{') => {
                *flow += 1;
                deepest = deepest.max(*flow);
            }
            (None, b']' | b'}') => *flow = flow.saturating_sub(1),
            (None, b'#') if i == 0 || bytes[i - 1] == b' ' => return (deepest, i),
            _ => {}
        }
    }
    (deepest, rest.len())
}

/// Whether a line's content ends with a block scalar's indicator (`key: |`, `- >-`, `|2+`).
fn opens_block_scalar(content: &str) -> bool {
    let last = content.rsplit([' ', ':']).next().unwrap_or(content);
    let mut chars = last.chars();
    matches!(chars.next(), Some('|' | '>'))
        && chars.all(|c| c == '-' || c == '+' || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubernetes_object_is_well_within_the_limit() {
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web\n  labels:\n    kubernetes.io/service-name: web\nendpoints:\n- addresses: [\"10.0.0.1\"]\n  conditions: {ready: true}\n  hints:\n    forZones:\n    - name: a\nports:\n- port: 80\n";
        assert_eq!(too_deep(slice, 3), None);
        assert_eq!(
            too_deep(slice, 2),
            Some(6),
            "metadata.labels' entries nest 3 deep"
        );
    }

    #[test]
    fn nested_block_sequences_flow_lists_and_compact_sequences_are_counted() {
        let block: String = (0..100).map(|i| format!("{}-\n", "  ".repeat(i))).collect();
        assert_eq!(too_deep(&block, MAX_DEPTH), Some(MAX_DEPTH + 1));
        let flow = format!("x: {}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(too_deep(&flow, MAX_DEPTH), Some(1));
        let compact = format!("{}x\n", "- ".repeat(100));
        assert_eq!(too_deep(&compact, MAX_DEPTH), Some(1));
        let json = format!("{}1{}", "[\n".repeat(100), "]\n".repeat(100));
        assert_eq!(too_deep(&json, MAX_DEPTH), Some(MAX_DEPTH));
    }

    #[test]
    fn brackets_in_quotes_comments_and_block_scalars_are_not_nesting() {
        let text = format!(
            "a: \"{0}\"\nb: '{0}'\nc: x # {0}\nd: |\n  {0}\n    {0}\n      deeper\ne: >-\n  {0}\nf: don't {1}\n",
            "[".repeat(100),
            "[]"
        );
        assert_eq!(too_deep(&text, 4), None);
    }
}
