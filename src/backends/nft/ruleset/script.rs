//! The `nft -f` syntax the fake kernel understands: the one-line commands `Transaction`'s
//! `Display` prints (`add|delete|flush` of tables, sets, maps, chains, rules and elements), and
//! the block form `compile::render` prints for --dry-run (`table ip kproxy { set … { … } chain …
//! { … } }`), both turned into one list of commands.
//!
//! Invariants: parsing has no effect (a syntax error anywhere refuses the whole script before
//! anything is applied); every command keeps its 1-based line number for error messages; rule
//! texts are kept verbatim (whitespace collapsed); a command may span lines while its braces are
//! open, as nft allows.

use crate::backends::nft::transaction::SetKind;
use crate::model::IpFamily;

/// One command on a table of `family` named `table`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    AddTable,
    DeleteTable,
    FlushTable,
    AddSet(SetKind, String, String),
    FlushSet(SetKind, String),
    DeleteSet(SetKind, String),
    /// Chain name, base-chain head (`type … hook … priority …; policy …;`).
    AddChain(String, Option<String>),
    FlushChain(String),
    DeleteChain(String),
    AddRule(String, String),
    /// Set, elements.
    AddElements(String, Vec<Item>),
    DeleteElements(String, Vec<String>),
}

/// A command with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub line: usize,
    pub family: IpFamily,
    pub table: String,
    pub cmd: Cmd,
}

/// Where and why a script does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub msg: String,
}

fn err<T>(line: usize, msg: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError {
        line,
        msg: msg.into(),
    })
}

fn collapse(s: &str) -> String {
    let s = s.trim();
    if s.contains("  ") || s.contains(['\t', '\n']) {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        s.to_string()
    }
}

fn family(word: &str, line: usize) -> Result<IpFamily, SyntaxError> {
    match word {
        "ip" => Ok(IpFamily::V4),
        "ip6" => Ok(IpFamily::V6),
        other => err(line, format!("the fake kernel has no {other:?} family")),
    }
}

fn set_kind(word: &str) -> Option<SetKind> {
    match word {
        "set" => Some(SetKind::Set),
        "map" => Some(SetKind::Map),
        _ => None,
    }
}

/// Splits `head { body }` into `head` and `body`; `None` without braces.
fn braces(text: &str) -> Option<(&str, &str)> {
    let open = text.find('{')?;
    let close = text.rfind('}')?;
    (close > open).then(|| (text[..open].trim(), text[open + 1..close].trim()))
}

/// One element of a script: key, value text if any, comment if any.
pub type Item = (String, Option<String>, Option<String>);

/// `a : x, b comment "c" : y` -> [(a, Some(x), None), (b, Some(y), Some(c))].
pub fn elements(body: &str) -> Vec<Item> {
    body.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (item, comment) = match item.split_once(" comment \"") {
                Some((k, rest)) => match rest.split_once('"') {
                    Some((c, tail)) => (format!("{k}{tail}"), Some(c.to_string())),
                    None => (item.to_string(), None),
                },
                None => (item.to_string(), None),
            };
            match item.split_once(" : ") {
                Some((k, v)) => (collapse(k), Some(collapse(v)), comment),
                None => (collapse(&item), None, comment),
            }
        })
        .collect()
}

fn depth(s: &str) -> i64 {
    s.bytes()
        .map(|b| match b {
            b'{' => 1,
            b'}' => -1,
            _ => 0,
        })
        .sum()
}

/// Parses a whole script.
pub fn parse(script: &str) -> Result<Vec<Located>, SyntaxError> {
    let mut out = Vec::new();
    let lines: Vec<&str> = script.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = i + 1;
        let mut text = strip_comment(lines[i]).to_string();
        i += 1;
        if text.is_empty() {
            continue;
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.len() == 4 && words[0] == "table" && words[3] == "{" {
            i = block(&lines, i, family(words[1], line)?, words[2], &mut out)?;
            continue;
        }
        // Depth counted line by line: a long element list stays linear.
        let mut open = depth(&text);
        while open > 0 && i < lines.len() {
            let more = strip_comment(lines[i]);
            open += depth(more);
            text.push(' ');
            text.push_str(more);
            i += 1;
        }
        if open != 0 {
            return err(line, "unbalanced braces");
        }
        out.push(command(&text, line)?);
    }
    Ok(out)
}

fn strip_comment(line: &str) -> &str {
    match line.find('#') {
        Some(i) => line[..i].trim(),
        None => line.trim(),
    }
}

/// One one-line command (braces joined).
fn command(text: &str, line: usize) -> Result<Located, SyntaxError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    // `table ip kproxy {}` is `add table ip kproxy`.
    let (verb, rest) = match words.first() {
        Some(&"table") => ("add", &words[..]),
        Some(v) => (*v, &words[1..]),
        None => return err(line, "empty command"),
    };
    let (Some(object), Some(fam), Some(table)) = (rest.first(), rest.get(1), rest.get(2)) else {
        return err(line, format!("incomplete command {text:?}"));
    };
    let family = family(fam, line)?;
    let name = rest.get(3).map(|s| s.to_string());
    let need_name = || {
        name.clone()
            .filter(|n| n != "{")
            .ok_or_else(|| SyntaxError {
                line,
                msg: format!("missing a name in {text:?}"),
            })
    };
    let body = braces(text).map(|(_, b)| b);
    let cmd = match (verb, *object) {
        ("add", "table") => Cmd::AddTable,
        ("delete", "table") => Cmd::DeleteTable,
        ("flush", "table") => Cmd::FlushTable,
        ("add", kind @ ("set" | "map")) => {
            let Some(body) = body else {
                return err(line, format!("{kind} without a declaration: {text:?}"));
            };
            Cmd::AddSet(
                set_kind(kind).unwrap_or(SetKind::Set),
                need_name()?,
                collapse(body),
            )
        }
        ("flush", kind @ ("set" | "map")) => {
            Cmd::FlushSet(set_kind(kind).unwrap_or(SetKind::Set), need_name()?)
        }
        ("delete", kind @ ("set" | "map")) => {
            Cmd::DeleteSet(set_kind(kind).unwrap_or(SetKind::Set), need_name()?)
        }
        ("add", "chain") => Cmd::AddChain(need_name()?, body.map(collapse)),
        ("flush", "chain") => Cmd::FlushChain(need_name()?),
        ("delete", "chain") => Cmd::DeleteChain(need_name()?),
        ("add", "rule") => {
            let chain = need_name()?;
            let rule = collapse(&words[words.len().min(5)..].join(" "));
            if rule.is_empty() {
                return err(line, format!("a rule without statements: {text:?}"));
            }
            Cmd::AddRule(chain, rule)
        }
        ("add", "element") => {
            let Some(body) = body else {
                return err(line, format!("elements need braces: {text:?}"));
            };
            Cmd::AddElements(need_name()?, elements(body))
        }
        ("delete", "element") => {
            let Some(body) = body else {
                return err(line, format!("elements need braces: {text:?}"));
            };
            let keys = elements(body).into_iter().map(|(k, ..)| k).collect();
            Cmd::DeleteElements(need_name()?, keys)
        }
        _ => return err(line, format!("the fake kernel does not parse {text:?}")),
    };
    Ok(Located {
        line,
        family,
        table: table.to_string(),
        cmd,
    })
}

/// Parses the inside of `table FAMILY NAME {` from line index `i`; returns the index after its
/// closing brace. As nft expands a table block: the table, then every chain (empty), then every
/// set with its elements, then every rule, so elements may jump to chains declared after them.
fn block(
    lines: &[&str],
    mut i: usize,
    family: IpFamily,
    table: &str,
    out: &mut Vec<Located>,
) -> Result<usize, SyntaxError> {
    let at = |line: usize, cmd: Cmd| Located {
        line,
        family,
        table: table.to_string(),
        cmd,
    };
    let (mut chains, mut sets, mut rules) = (Vec::new(), Vec::new(), Vec::new());
    out.push(at(i, Cmd::AddTable));
    while i < lines.len() {
        let line = i + 1;
        let text = strip_comment(lines[i]);
        i += 1;
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["}"] => {
                out.extend(chains);
                out.extend(sets);
                out.extend(rules);
                return Ok(i);
            }
            [kind @ ("set" | "map"), name, "{"] => {
                let kind = set_kind(kind).unwrap_or(SetKind::Set);
                let mut decl = Vec::new();
                let mut items = Vec::new();
                loop {
                    let Some(raw) = lines.get(i) else {
                        return err(line, format!("set {name} is not closed"));
                    };
                    i += 1;
                    let mut t = strip_comment(raw).to_string();
                    if t == "}" {
                        break;
                    }
                    if let Some(rest) = t.strip_prefix("elements = ") {
                        let mut body = rest.to_string();
                        let mut open = depth(&body);
                        while open > 0 && i < lines.len() {
                            let more = strip_comment(lines[i]);
                            open += depth(more);
                            body.push(' ');
                            body.push_str(more);
                            i += 1;
                        }
                        let Some((_, inner)) = braces(&body) else {
                            return err(line, format!("bad elements of {name}"));
                        };
                        items = elements(inner);
                        continue;
                    }
                    if t.ends_with(';') {
                        t.pop();
                    }
                    decl.push(t);
                }
                let decl = collapse(&decl.join("; "));
                sets.push(at(line, Cmd::AddSet(kind, name.to_string(), decl)));
                if !items.is_empty() {
                    sets.push(at(line, Cmd::AddElements(name.to_string(), items)));
                }
            }
            ["chain", name, "{"] => {
                let mut head = None;
                loop {
                    let Some(raw) = lines.get(i) else {
                        return err(line, format!("chain {name} is not closed"));
                    };
                    i += 1;
                    match strip_comment(raw) {
                        "}" => break,
                        "" => {}
                        t if t.starts_with("type ") && t.contains(" hook ") => {
                            head = Some(collapse(t))
                        }
                        t => rules.push(at(i, Cmd::AddRule(name.to_string(), collapse(t)))),
                    }
                }
                chains.push(at(line, Cmd::AddChain(name.to_string(), head)));
            }
            _ => {
                return err(
                    line,
                    format!("the fake kernel does not parse {text:?} in a table"),
                );
            }
        }
    }
    err(i, format!("table {table} is not closed"))
}
