//! Permissions: the five levels, custom permission sets, and the checks that use them.
//!
//! A caller's [`Permissions`] say which op families it may use, which resolved paths it may read
//! or write, which programs EXEC may start, which hosts and methods HTTP may use and how much LLM
//! quota it has. Two rules keep this safe:
//!
//! * **Dropping privileges is one-way.** A caller may replace its own set only with one that is
//!   [`Permissions::within`] its current set; nothing it can send raises it again.
//! * **Managing others needs the manage right** (`can_manage`), and a manager can hand out only
//!   what it holds itself.
//!
//! Glob semantics for path patterns (documented in README.md): patterns are absolute paths;
//! `*` matches any run of characters inside one path component; `**` matches any run of
//! characters including `/`; `/dir/**` also matches `/dir` itself. Deny (`blocked`) wins over
//! allow. Paths are checked after resolution (symlinks and `..` removed), never as written.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The named presets, from most to least capable.
pub const LEVELS: [&str; 5] = [
    "unrestricted",
    "standard",
    "sandboxed",
    "readonly",
    "minimal",
];

/// All HTTP methods the HTTP op knows.
const ALL_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRules {
    pub read: Vec<String>,
    pub write: Vec<String>,
    pub blocked: Vec<String>,
}

/// LLM quota and usage. A limit of 0 means "no limit".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmQuota {
    pub max_tokens: u64,
    pub max_calls: u64,
    #[serde(default)]
    pub tokens_used: u64,
    #[serde(default)]
    pub calls_made: u64,
}

/// One caller's permission set, exactly as GET_PERMS reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// The preset this set equals, or `custom`.
    pub level: String,
    pub can_exec: bool,
    pub can_read: bool,
    pub can_write: bool,
    pub can_think: bool,
    pub can_spawn: bool,
    pub can_http: bool,
    /// The manage right: SPAWN, KILL, PAUSE, RESUME and SET_PERMS on other callers.
    pub can_manage: bool,
    pub filesystem: FsRules,
    /// Programs EXEC may start (basename globs); `*` allows any.
    pub exec: Vec<String>,
    /// Programs or phrases EXEC refuses, checked before `exec`.
    pub blocked_commands: Vec<String>,
    /// Hosts HTTP may reach: exact names, `*.suffix`, or `*` for any.
    pub network: Vec<String>,
    pub http_methods: Vec<String>,
    pub llm: LlmQuota,
    /// Upper bound on one EXEC's timeout; 0 means only the daemon-wide cap applies.
    pub max_exec_time_ms: u64,
}

/// A partial permission set: what SET_PERMS `permissions` and the config's level overrides carry.
/// Every field is optional; the ones present replace the base's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermsPatch {
    pub can_exec: Option<bool>,
    pub can_read: Option<bool>,
    pub can_write: Option<bool>,
    pub can_think: Option<bool>,
    pub can_spawn: Option<bool>,
    pub can_http: Option<bool>,
    pub can_manage: Option<bool>,
    pub filesystem: Option<FsPatch>,
    pub exec: Option<Vec<String>>,
    pub blocked_commands: Option<Vec<String>>,
    pub network: Option<Vec<String>>,
    pub http_methods: Option<Vec<String>>,
    pub llm: Option<LlmPatch>,
    pub max_exec_time_ms: Option<u64>,
    /// Accepted (GET_PERMS output can be sent back as-is) but ignored: the level is derived.
    pub level: Option<String>,
}

impl PermsPatch {
    /// Refuses a patch with more than `max` rules in any list (`limits.max_permission_rules`).
    /// Checking that one set lies within another compares rules pairwise, on the reactor
    /// thread, so the lists a request may bring are bounded. (Lists a patch leaves alone come
    /// from the config's presets or from an earlier, already bounded, patch.)
    pub fn check_rule_counts(&self, max: usize) -> Result<(), String> {
        let fs = self.filesystem.as_ref();
        let lists = [
            ("filesystem.read", fs.and_then(|f| f.read.as_ref())),
            ("filesystem.write", fs.and_then(|f| f.write.as_ref())),
            ("filesystem.blocked", fs.and_then(|f| f.blocked.as_ref())),
            ("exec", self.exec.as_ref()),
            ("blocked_commands", self.blocked_commands.as_ref()),
            ("network", self.network.as_ref()),
            ("http_methods", self.http_methods.as_ref()),
        ];
        for (name, list) in lists {
            let Some(list) = list else { continue };
            if list.len() > max {
                return Err(format!(
                    "too many permission rules: `{name}` has {}, at most {max} (limits.max_permission_rules)",
                    list.len()
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsPatch {
    pub read: Option<Vec<String>>,
    pub write: Option<Vec<String>>,
    pub blocked: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmPatch {
    pub max_tokens: Option<u64>,
    pub max_calls: Option<u64>,
    /// Usage counters are facts, not settings: accepted and ignored.
    pub tokens_used: Option<u64>,
    pub calls_made: Option<u64>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Files no one below `unrestricted` may touch, whatever else their rules say.
fn system_blocked(state_dir: &str) -> Vec<String> {
    let mut v = strings(&[
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/sudoers",
        "/etc/sudoers.d/**",
        "/root/.ssh/**",
        "/home/*/.ssh/**",
        "/proc/*/mem",
        "/proc/*/environ",
    ]);
    if !state_dir.is_empty() {
        v.push(format!("{}/**", state_dir.trim_end_matches('/')));
    }
    v
}

const DANGEROUS_COMMANDS: [&str; 12] = [
    "sudo",
    "su",
    "doas",
    "mkfs",
    "mkfs.*",
    "dd",
    "shutdown",
    "reboot",
    "halt",
    "poweroff",
    "rm -rf /",
    "chmod -R 777 /",
];

/// The built-in preset for `level`, before config overrides. `state_dir` is blocked for every
/// level below `unrestricted`, because it holds the daemon's own state and secrets.
pub fn builtin_level(level: &str, state_dir: &str) -> Option<Permissions> {
    let p = match level {
        "unrestricted" => Permissions {
            level: level.into(),
            can_exec: true,
            can_read: true,
            can_write: true,
            can_think: true,
            can_spawn: true,
            can_http: true,
            can_manage: true,
            filesystem: FsRules {
                read: strings(&["/**"]),
                write: strings(&["/**"]),
                blocked: vec![],
            },
            exec: strings(&["*"]),
            blocked_commands: vec![],
            network: strings(&["*"]),
            http_methods: strings(&ALL_METHODS),
            llm: LlmQuota::default(),
            max_exec_time_ms: 0,
        },
        "standard" => Permissions {
            level: level.into(),
            can_exec: true,
            can_read: true,
            can_write: true,
            can_think: true,
            can_spawn: false,
            can_http: true,
            can_manage: false,
            filesystem: FsRules {
                read: strings(&["/**"]),
                write: strings(&["/tmp/**", "/var/tmp/**"]),
                blocked: system_blocked(state_dir),
            },
            exec: strings(&["*"]),
            blocked_commands: strings(&DANGEROUS_COMMANDS),
            network: strings(&["*"]),
            http_methods: strings(&["GET", "POST", "HEAD"]),
            llm: LlmQuota {
                max_tokens: 1_000_000,
                max_calls: 1_000,
                ..Default::default()
            },
            max_exec_time_ms: 300_000,
        },
        "sandboxed" => Permissions {
            level: level.into(),
            can_exec: false,
            can_read: true,
            can_write: true,
            can_think: true,
            can_spawn: false,
            can_http: false,
            can_manage: false,
            filesystem: FsRules {
                read: strings(&["/tmp/**"]),
                write: strings(&["/tmp/**"]),
                blocked: system_blocked(state_dir),
            },
            exec: vec![],
            blocked_commands: strings(&DANGEROUS_COMMANDS),
            network: vec![],
            http_methods: vec![],
            llm: LlmQuota {
                max_tokens: 200_000,
                max_calls: 200,
                ..Default::default()
            },
            max_exec_time_ms: 60_000,
        },
        "readonly" => Permissions {
            level: level.into(),
            can_exec: false,
            can_read: true,
            can_write: false,
            can_think: true,
            can_spawn: false,
            can_http: false,
            can_manage: false,
            filesystem: FsRules {
                read: strings(&["/**"]),
                write: vec![],
                blocked: system_blocked(state_dir),
            },
            exec: vec![],
            blocked_commands: strings(&DANGEROUS_COMMANDS),
            network: vec![],
            http_methods: vec![],
            llm: LlmQuota {
                max_tokens: 200_000,
                max_calls: 200,
                ..Default::default()
            },
            max_exec_time_ms: 60_000,
        },
        "minimal" => Permissions {
            level: level.into(),
            can_exec: false,
            can_read: false,
            can_write: false,
            can_think: false,
            can_spawn: false,
            can_http: false,
            can_manage: false,
            filesystem: FsRules {
                read: vec![],
                write: vec![],
                blocked: system_blocked(state_dir),
            },
            exec: vec![],
            blocked_commands: strings(&DANGEROUS_COMMANDS),
            network: vec![],
            http_methods: vec![],
            llm: LlmQuota {
                max_tokens: 1,
                max_calls: 1,
                ..Default::default()
            },
            max_exec_time_ms: 10_000,
        },
        _ => return None,
    };
    Some(p)
}

impl Permissions {
    /// Applies `patch` on top of `self`, keeping usage counters. The level becomes `custom`
    /// unless the result equals `preset_of_level` (the preset with the same name).
    pub fn patched(&self, patch: &PermsPatch) -> Permissions {
        let mut p = self.clone();
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &patch.$f { p.$f = v.clone(); } )* };
        }
        set!(
            can_exec,
            can_read,
            can_write,
            can_think,
            can_spawn,
            can_http,
            can_manage,
            exec,
            blocked_commands,
            network,
            http_methods,
            max_exec_time_ms
        );
        if let Some(fs) = &patch.filesystem {
            if let Some(v) = &fs.read {
                p.filesystem.read = v.clone();
            }
            if let Some(v) = &fs.write {
                p.filesystem.write = v.clone();
            }
            if let Some(v) = &fs.blocked {
                p.filesystem.blocked = v.clone();
            }
        }
        if let Some(llm) = &patch.llm {
            if let Some(v) = llm.max_tokens {
                p.llm.max_tokens = v;
            }
            if let Some(v) = llm.max_calls {
                p.llm.max_calls = v;
            }
        }
        if p != *self {
            p.level = "custom".into();
        }
        p
    }

    /// Checks the patterns and method names, so a bad set is refused before it is installed.
    pub fn validate(&self) -> Result<(), String> {
        for pat in self
            .filesystem
            .read
            .iter()
            .chain(&self.filesystem.write)
            .chain(&self.filesystem.blocked)
        {
            if !pat.starts_with('/') {
                return Err(format!(
                    "path pattern {pat:?} must be absolute (start with '/')"
                ));
            }
        }
        for m in &self.http_methods {
            if !ALL_METHODS.contains(&m.as_str()) {
                return Err(format!(
                    "unknown HTTP method {m:?} (known: {})",
                    ALL_METHODS.join(", ")
                ));
            }
        }
        for h in &self.network {
            if h.is_empty() || h.contains('/') || h.contains(' ') {
                return Err(format!("network entry {h:?} is not a host name pattern"));
            }
        }
        Ok(())
    }

    /// True when every capability of `self` is also a capability of `other`: this is the test
    /// for "lowering" (a caller may move only to a set within its current one).
    pub fn within(&self, other: &Permissions) -> bool {
        let flags = [
            (self.can_exec, other.can_exec),
            (self.can_read, other.can_read),
            (self.can_write, other.can_write),
            (self.can_think, other.can_think),
            (self.can_spawn, other.can_spawn),
            (self.can_http, other.can_http),
            (self.can_manage, other.can_manage),
        ];
        if flags.iter().any(|&(mine, theirs)| mine && !theirs) {
            return false;
        }
        patterns_within(&self.filesystem.read, &other.filesystem.read)
            && patterns_within(&self.filesystem.write, &other.filesystem.write)
            && superset(&self.filesystem.blocked, &other.filesystem.blocked)
            && names_within(&self.exec, &other.exec)
            && superset(&self.blocked_commands, &other.blocked_commands)
            && hosts_within(&self.network, &other.network)
            && names_within(&self.http_methods, &other.http_methods)
            && limit_within(self.llm.max_tokens, other.llm.max_tokens)
            && limit_within(self.llm.max_calls, other.llm.max_calls)
            && limit_within(self.max_exec_time_ms, other.max_exec_time_ms)
    }

    /// May this caller read files at all?
    pub fn read_allowed(&self) -> Result<(), String> {
        if self.can_read {
            Ok(())
        } else {
            Err("permission denied: this caller may not read files (can_read is false)".into())
        }
    }

    /// May this caller write files at all?
    pub fn write_allowed(&self) -> Result<(), String> {
        if self.can_write {
            Ok(())
        } else {
            Err("permission denied: this caller may not write files (can_write is false)".into())
        }
    }

    /// May a resolved path be read?
    pub fn may_read(&self, resolved: &Path) -> Result<(), String> {
        self.read_allowed()?;
        self.path_allowed(resolved, &self.filesystem.read, "read")
    }

    /// May a resolved path be written?
    pub fn may_write(&self, resolved: &Path) -> Result<(), String> {
        self.write_allowed()?;
        self.path_allowed(resolved, &self.filesystem.write, "write")
    }

    fn path_allowed(&self, resolved: &Path, allow: &[String], what: &str) -> Result<(), String> {
        let Some(text) = resolved.to_str() else {
            return Err("permission denied: path is not valid UTF-8".into());
        };
        if let Some(rule) = self.filesystem.blocked.iter().find(|p| glob_match(p, text)) {
            return Err(format!(
                "permission denied: {text} is blocked by rule {rule:?}"
            ));
        }
        if allow.iter().any(|p| glob_match(p, text)) {
            Ok(())
        } else {
            Err(format!(
                "permission denied: {text} is outside the allowed {what} paths {allow:?}"
            ))
        }
    }

    /// May EXEC run `command`? The check splits the shell text into simple commands and looks
    /// at each program name; it is a guard against accidents, not a sandbox (the shell language
    /// is too rich for a text check to be a security boundary: use the agent sandbox for that).
    pub fn may_exec(&self, command: &str) -> Result<(), String> {
        if !self.can_exec {
            return Err(
                "permission denied: this caller may not run commands (can_exec is false)".into(),
            );
        }
        let normalized = command.split_whitespace().collect::<Vec<_>>().join(" ");
        for rule in &self.blocked_commands {
            if rule.contains(' ') && contains_phrase(&normalized, rule) {
                return Err(format!(
                    "permission denied: command matches blocked rule {rule:?}"
                ));
            }
        }
        for program in program_names(command) {
            let base = program.rsplit('/').next().unwrap_or(&program);
            if let Some(rule) = self
                .blocked_commands
                .iter()
                .find(|r| !r.contains(' ') && glob_match(r, base))
            {
                return Err(format!(
                    "permission denied: program {base:?} is blocked by rule {rule:?}"
                ));
            }
            if !self.exec.iter().any(|r| r == "*" || glob_match(r, base)) {
                return Err(format!(
                    "permission denied: program {base:?} is not in the allowed list {:?}",
                    self.exec
                ));
            }
        }
        Ok(())
    }

    /// May HTTP reach `host` with `method`?
    pub fn may_http(&self, host: &str, method: &str) -> Result<(), String> {
        if !self.can_http {
            return Err(
                "permission denied: this caller may not make HTTP requests (can_http is false)"
                    .into(),
            );
        }
        if !self
            .http_methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
        {
            return Err(format!(
                "permission denied: HTTP method {method} is not in {:?}",
                self.http_methods
            ));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.network.iter().any(|rule| host_match(rule, &host)) {
            Ok(())
        } else {
            Err(format!(
                "permission denied: host {host:?} is not in the allow-list {:?}",
                self.network
            ))
        }
    }
}

fn limit_within(mine: u64, theirs: u64) -> bool {
    theirs == 0 || (mine != 0 && mine <= theirs)
}

fn superset(mine: &[String], theirs: &[String]) -> bool {
    theirs.iter().all(|t| mine.contains(t))
}

fn names_within(mine: &[String], theirs: &[String]) -> bool {
    theirs.iter().any(|t| t == "*")
        || mine
            .iter()
            .all(|m| theirs.iter().any(|t| t.eq_ignore_ascii_case(m)))
}

fn hosts_within(mine: &[String], theirs: &[String]) -> bool {
    mine.iter().all(|m| {
        theirs.iter().any(|t| {
            t == "*"
                || t == m
                || (t.starts_with("*.") && m.len() > t.len() - 1 && m.ends_with(&t[1..]))
        })
    })
}

/// Conservative pattern coverage: `mine` is within `theirs` when each of its patterns equals one
/// of theirs, or lies under one of their `dir/**` patterns.
fn patterns_within(mine: &[String], theirs: &[String]) -> bool {
    mine.iter().all(|m| {
        theirs.iter().any(|t| {
            if t == m || t == "/**" {
                return true;
            }
            match t.strip_suffix("/**") {
                Some(dir) if !dir.contains('*') => m == dir || m.starts_with(&format!("{dir}/")),
                _ => false,
            }
        })
    })
}

/// Matches a host against an allow-list rule: `*`, an exact name, or `*.suffix` (which matches
/// strict subdomains only, never the bare suffix).
pub fn host_match(rule: &str, host: &str) -> bool {
    let rule = rule.to_ascii_lowercase();
    if rule == "*" || rule == host {
        return true;
    }
    match rule.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => false,
    }
}

/// Glob match with `*` (within one path component) and `**` (across components). A trailing
/// `/**` also matches the directory itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if let Some(dir) = pattern.strip_suffix("/**")
        && glob_match(dir, text)
    {
        return true;
    }
    glob_bytes(pattern.as_bytes(), text.as_bytes())
}

fn glob_bytes(p: &[u8], t: &[u8]) -> bool {
    // Iterative matcher with backtracking over the last star; `**` may cross '/', `*` may not.
    // Patterns here are short, so the worst case (quadratic) is irrelevant.
    if p.is_empty() {
        return t.is_empty();
    }
    if p.starts_with(b"**") {
        let rest = &p[2..];
        return (0..=t.len()).any(|i| glob_bytes(rest, &t[i..]));
    }
    if p[0] == b'*' {
        let rest = &p[1..];
        for i in 0..=t.len() {
            if glob_bytes(rest, &t[i..]) {
                return true;
            }
            if i < t.len() && t[i] == b'/' {
                break;
            }
        }
        return false;
    }
    !t.is_empty() && p[0] == t[0] && glob_bytes(&p[1..], &t[1..])
}

fn contains_phrase(haystack: &str, phrase: &str) -> bool {
    let phrase = phrase.split_whitespace().collect::<Vec<_>>().join(" ");
    haystack.match_indices(&phrase).any(|(i, _)| {
        let before_ok = i == 0 || !haystack.as_bytes()[i - 1].is_ascii_alphanumeric();
        let end = i + phrase.len();
        let after_ok = end == haystack.len() || !haystack.as_bytes()[end].is_ascii_alphanumeric();
        before_ok && after_ok
    })
}

/// The program names of the simple commands in a shell text: the first word of each segment
/// split on `; & | ( ) { } \n`, backticks and `$(`, after any `VAR=value` assignments and
/// wrappers such as `env`, `exec`, `nohup`, `time`, `command`, `xargs`.
pub fn program_names(command: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut segment = String::new();
    let mut chars = command.chars().peekable();
    let mut segments = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            ';' | '&' | '|' | '(' | ')' | '{' | '}' | '\n' | '`' => {
                segments.push(std::mem::take(&mut segment));
            }
            '$' if chars.peek() == Some(&'(') => {
                chars.next();
                segments.push(std::mem::take(&mut segment));
            }
            _ => segment.push(c),
        }
    }
    segments.push(segment);
    const WRAPPERS: [&str; 9] = [
        "env", "exec", "nohup", "time", "command", "xargs", "nice", "timeout", "builtin",
    ];
    for seg in segments {
        let mut words = seg
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '"' || c == '\''));
        let mut prev_was_timeout = false;
        for w in words.by_ref() {
            if w.is_empty() || (w.contains('=') && !w.starts_with('=')) || w.starts_with('-') {
                continue;
            }
            if prev_was_timeout && w.chars().all(|c| c.is_ascii_digit() || c == '.') {
                continue;
            }
            if WRAPPERS.contains(&w) {
                prev_was_timeout = w == "timeout";
                continue;
            }
            if matches!(
                w,
                "if" | "then" | "else" | "elif" | "do" | "while" | "until" | "!"
            ) {
                continue;
            }
            if matches!(w, "fi" | "done" | "esac") {
                break;
            }
            names.push(w.to_string());
            break;
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(name: &str) -> Permissions {
        builtin_level(name, "/var/lib/clove").unwrap()
    }

    #[test]
    fn globs() {
        assert!(glob_match("/tmp/**", "/tmp"));
        assert!(glob_match("/tmp/**", "/tmp/a/b/c"));
        assert!(!glob_match("/tmp/**", "/tmpfoo"));
        assert!(glob_match("/tmp/*", "/tmp/a"));
        assert!(!glob_match("/tmp/*", "/tmp/a/b"));
        assert!(glob_match("/home/*/.ssh/**", "/home/bob/.ssh/id_rsa"));
        assert!(glob_match("/**", "/etc/passwd"));
        assert!(glob_match("mkfs.*", "mkfs.ext4"));
    }

    #[test]
    fn levels_are_ordered() {
        for (i, hi) in LEVELS.iter().enumerate() {
            for lo in &LEVELS[i + 1..] {
                // sandboxed (write /tmp) and readonly (read everything) are not comparable.
                if !(*hi == "sandboxed" && *lo == "readonly") {
                    assert!(level(lo).within(&level(hi)), "{lo} within {hi}");
                }
                assert!(!level(hi).within(&level(lo)), "{hi} not within {lo}");
            }
        }
        for l in LEVELS {
            assert!(level(l).within(&level("unrestricted")));
            assert!(level(l).within(&level(l)));
        }
    }

    #[test]
    fn lowering_and_raising() {
        let std = level("standard");
        let lower = std.patched(&PermsPatch {
            can_exec: Some(false),
            ..Default::default()
        });
        assert_eq!(lower.level, "custom");
        assert!(lower.within(&std));
        let raise = lower.patched(&PermsPatch {
            can_exec: Some(true),
            ..Default::default()
        });
        assert!(!raise.within(&lower));
        let wider_write = std.patched(&PermsPatch {
            filesystem: Some(FsPatch {
                write: Some(vec!["/**".into()]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(!wider_write.within(&std));
        let narrower_write = std.patched(&PermsPatch {
            filesystem: Some(FsPatch {
                write: Some(vec!["/tmp/agent/**".into()]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(narrower_write.within(&std));
        let fewer_blocks = std.patched(&PermsPatch {
            filesystem: Some(FsPatch {
                blocked: Some(vec![]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(!fewer_blocks.within(&std));
        let unlimited = std.patched(&PermsPatch {
            llm: Some(LlmPatch {
                max_tokens: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(!unlimited.within(&std));
    }

    #[test]
    fn path_checks() {
        let std = level("standard");
        assert!(std.may_write(Path::new("/tmp/x")).is_ok());
        assert!(std.may_write(Path::new("/etc/passwd")).is_err());
        assert!(std.may_read(Path::new("/etc/passwd")).is_ok());
        assert!(std.may_read(Path::new("/etc/shadow")).is_err());
        assert!(std.may_read(Path::new("/var/lib/clove/store.db")).is_err());
        assert!(level("minimal").may_read(Path::new("/tmp/x")).is_err());
    }

    #[test]
    fn commands() {
        let std = level("standard");
        assert!(std.may_exec("ls -la /tmp | wc -l").is_ok());
        assert!(std.may_exec("echo hi; sudo ls").is_err());
        assert!(std.may_exec("FOO=1 /usr/bin/sudo ls").is_err());
        assert!(std.may_exec("echo $(dd if=/dev/zero)").is_err());
        assert!(std.may_exec("rm  -rf   /").is_err());
        assert!(std.may_exec("rm -rf /tmp/x").is_ok());
        assert!(std.may_exec("mkfs.ext4 /dev/sda").is_err());
        let only_echo = std.patched(&PermsPatch {
            exec: Some(vec!["echo".into()]),
            ..Default::default()
        });
        assert!(only_echo.may_exec("echo hi").is_ok());
        assert!(only_echo.may_exec("echo hi && cat /etc/passwd").is_err());
        assert!(level("readonly").may_exec("echo hi").is_err());
    }

    #[test]
    fn hosts() {
        assert!(host_match("*.example.org", "api.example.org"));
        assert!(!host_match("*.example.org", "example.org"));
        assert!(!host_match("*.example.org", "evilexample.org"));
        assert!(host_match("localhost", "localhost"));
        let p = level("standard").patched(&PermsPatch {
            network: Some(vec!["127.0.0.1".into()]),
            ..Default::default()
        });
        assert!(p.may_http("127.0.0.1", "GET").is_ok());
        assert!(p.may_http("127.0.0.2", "GET").is_err());
        assert!(p.may_http("127.0.0.1", "DELETE").is_err());
    }
}
