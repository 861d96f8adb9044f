//! Reading a config file into [`RawConfig`] with every problem at once, in file order, each
//! with its line, and a did-you-mean for a misspelled key (`wokers` → `workers`).
//!
//! Each section's `Raw*` type lives next to its module and stays `deny_unknown_fields`;
//! nothing here names a section. The file is parsed once into a spanned document; then
//! [`RawConfig`] is deserialized from it, and each error serde reports (the first one only,
//! as serde stops there) is located in the document by its span, written down, and the
//! offending key removed, until the rest deserializes. A section added to [`RawConfig`]
//! later gets the same treatment without anything to declare. Problems found when the raw
//! values are validated (`server.workers: must be at least 1`) get the line of the key they
//! name in the same way.

use crate::config::RawConfig;
use serde::Deserialize;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Most problems reported for one file (each costs one more pass over the document).
const MAX_PROBLEMS: usize = 100;

/// One problem, with the line it is on when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub text: String,
}

/// A parsed config file: the document (for lines of later problems) and its text.
pub struct File<'a> {
    text: &'a str,
    doc: Spanned<DeTable<'a>>,
}

impl<'a> File<'a> {
    /// Parses `text` and reads it into [`RawConfig`]: the raw config (without the keys that
    /// were wrong) and every problem found.
    pub fn read(text: &'a str) -> (File<'a>, RawConfig, Vec<Problem>) {
        let (doc, syntax) = DeTable::parse_recoverable(text);
        let mut problems: Vec<Problem> = syntax
            .iter()
            .map(|e| Problem {
                line: e.span().map(|s| line_of(text, s.start)),
                text: format!("invalid TOML: {}", first_line(e.message())),
            })
            .collect();
        let file = File { text, doc };
        let mut doc = file.doc.clone();
        for _ in 0..MAX_PROBLEMS {
            let e = match RawConfig::deserialize(toml::de::Deserializer::from(doc.clone())) {
                Ok(raw) => return (file, raw, problems),
                Err(e) => e,
            };
            let path = e
                .span()
                .and_then(|s| locate(doc.get_ref(), &s, &mut Vec::new()));
            let line = e.span().map(|s| line_of(text, s.start));
            problems.push(Problem {
                line,
                text: describe(path.as_deref(), e.message()),
            });
            match path {
                Some(p) if remove(doc.get_mut(), &p) => {}
                // Nothing to take away: the rest cannot be read past this problem.
                _ => break,
            }
        }
        (file, RawConfig::default(), problems)
    }

    /// The line of the key a validation message starts with (`server.workers: ...`).
    pub fn line_of_message(&self, msg: &str) -> Option<usize> {
        let (key, _) = msg.split_once(": ")?;
        if key.is_empty() || key.contains(' ') {
            return None;
        }
        let path: Vec<&str> = key.split('.').collect();
        let span = span_of(self.doc.get_ref(), &path)?;
        Some(line_of(self.text, span.start))
    }
}

/// `section.key: what is wrong`, with serde's "unknown field `x`, expected one of ..." turned
/// into a did-you-mean.
pub fn describe(path: Option<&[String]>, message: &str) -> String {
    let message = first_line(message);
    let key = path.map(|p| p.join("."));
    let prefix = key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default();
    match unknown_field(message) {
        Some((word, known)) => {
            let advice =
                match crate::spelling::did_you_mean(&word, known.iter().map(String::as_str)) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None if known.is_empty() => "this table takes no keys".to_string(),
                    None => format!("the keys here are {}", known.join(", ")),
                };
            let shown = key.unwrap_or(word);
            format!("{shown}: unknown key; {advice}")
        }
        None => format!("{prefix}{message}"),
    }
}

/// A problem found when the raw values are validated, as it is reported: an open table
/// checked then (`permissions.levels.NAME`) names a misspelled key the way serde does
/// (`permissions.levels.standard: unknown field `can_htp`, expected one of ...`), which
/// becomes `permissions.levels.standard.can_htp: unknown key; did you mean `can_http`?`.
pub fn describe_validation(message: &str) -> String {
    match message.split_once(": ") {
        Some((key, rest)) if !key.contains(' ') && unknown_field(rest).is_some() => {
            let mut path: Vec<String> = key.split('.').map(str::to_string).collect();
            if let Some((word, _)) = unknown_field(rest) {
                path.push(word);
            }
            describe(Some(&path), rest)
        }
        _ => describe(None, message),
    }
}

/// The word and the expected names of serde's unknown-field message.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (word, rest) = rest.split_once('`')?;
    let known = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((word.to_string(), known))
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("").trim()
}

/// The 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The key path of the entry whose key holds `span`, else of the innermost entry whose value
/// holds it. Tables are searched whatever their own span (a `[section]`'s keys may be anywhere
/// in the file, and a `[a.b.c]` header's span holds the keys `a` and `b`); arrays are taken
/// whole.
fn locate(table: &DeTable, span: &Range<usize>, path: &mut Vec<String>) -> Option<Vec<String>> {
    for (k, v) in table.iter() {
        path.push(k.get_ref().to_string());
        if contains(&k.span(), span) {
            return Some(path.clone());
        }
        if let DeValue::Table(t) = v.get_ref()
            && let Some(found) = locate(t, span, path)
        {
            return Some(found);
        }
        if contains(&v.span(), span) {
            return Some(path.clone());
        }
        path.pop();
    }
    None
}

/// Removes the entry at `path`; false when there is none.
fn remove(table: &mut DeTable, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => {
            let key = table
                .iter()
                .find(|(k, _)| k.get_ref() == last)
                .map(|(k, _)| k.clone());
            key.is_some_and(|k| table.remove(&k).is_some())
        }
        [first, rest @ ..] => {
            for (k, v) in table.iter_mut() {
                if k.get_ref() == first
                    && let DeValue::Table(t) = v.get_mut()
                {
                    return remove(t, rest);
                }
            }
            false
        }
    }
}

/// The span of the key at `path`.
fn span_of(table: &DeTable, path: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (k, v) = table.iter().find(|(k, _)| k.get_ref() == first)?;
    if rest.is_empty() {
        return Some(k.span());
    }
    match v.get_ref() {
        DeValue::Table(t) => span_of(t, rest).or(Some(k.span())),
        _ => Some(k.span()),
    }
}

/// Problems in file order (those without a line last, in the order found), as
/// `FILE:LINE: text`.
pub fn report(file: &Path, mut problems: Vec<Problem>) -> Vec<String> {
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    problems
        .into_iter()
        .map(|p| match p.line {
            Some(l) => format!("{}:{l}: {}", file.display(), p.text),
            None => format!("{}: {}", file.display(), p.text),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        File::read(text).2
    }

    #[test]
    fn every_problem_at_once_with_its_line_and_a_suggestion() {
        let text = "[server]\nsocket_mode = \"0600\"\nwokers = 4\n\n[limits]\nmailbox_len = \"x\"\n\
                    [sevrer]\nworkers = 2\n[audit]\nlog_secrity = true\n";
        let p = problems(text);
        let lines: Vec<Option<usize>> = p.iter().map(|p| p.line).collect();
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!(sorted, [Some(3), Some(6), Some(7), Some(10)], "{p:?}");
        let all: Vec<String> = p.iter().map(|p| p.text.clone()).collect();
        assert!(
            all.contains(&"server.wokers: unknown key; did you mean `workers`?".into()),
            "{all:?}"
        );
        assert!(
            all.contains(&"sevrer: unknown key; did you mean `server`?".into()),
            "{all:?}"
        );
        assert!(
            all.contains(&"audit.log_secrity: unknown key; did you mean `log_security`?".into()),
            "{all:?}"
        );
        assert!(
            all.iter()
                .any(|t| t.starts_with("limits.mailbox_len: invalid type")),
            "{all:?}"
        );
        // What is right is kept.
        let (_, raw, _) = File::read(text);
        assert_eq!(raw.server.socket_mode.as_deref(), Some("0600"));
    }

    #[test]
    fn syntax_errors_have_lines_too_and_a_clean_file_has_no_problem() {
        let p = problems("[server]\nworkers = \n");
        assert_eq!(p[0].line, Some(2), "{p:?}");
        assert!(p[0].text.starts_with("invalid TOML"), "{p:?}");
        assert!(problems("[server]\nworkers = 4\n").is_empty());
        assert!(problems("").is_empty());
    }

    #[test]
    fn a_misspelled_table_in_a_header_is_one_problem() {
        let p = problems("[llm.modles.x]\nbase_url = \"y\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].text, "llm.modles: unknown key; did you mean `models`?");
        assert_eq!(
            describe_validation(
                "permissions.levels.standard: unknown field `can_htp`, expected one of `can_exec`, `can_http`"
            ),
            "permissions.levels.standard.can_htp: unknown key; did you mean `can_http`?"
        );
    }

    #[test]
    fn validation_messages_find_the_line_of_their_key() {
        let (f, _, _) =
            File::read("# c\n[server]\n\nworkers = 0\n[llm.models.x]\nbase_url = \"y\"\n");
        assert_eq!(
            f.line_of_message("server.workers: must be at least 1"),
            Some(4)
        );
        assert_eq!(f.line_of_message("llm.models.x.base_url: bad"), Some(6));
        assert_eq!(f.line_of_message("server.socket: not in the file"), Some(2));
        assert_eq!(f.line_of_message("no key here"), None);
    }
}
