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
//!
//! Two rules reach beyond the pattern text, because a path alone does not say everything about
//! a file (README.md, "Permissions"): files on pseudo-filesystems (`/proc`, `/sys`, ...) are
//! served only through a rule that names a directory ([`Permissions::names_explicitly`]), never
//! through `/**`; and a file with more than one hard link only to a caller whose rules reach
//! every path ([`Permissions::reaches_every_path`]), since its other names are unknown.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

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
        for (name, list) in self.lists() {
            if list.len() > max {
                return Err(format!(
                    "too many permission rules: `{name}` has {}, at most {max} (limits.max_permission_rules)",
                    list.len()
                ));
            }
        }
        Ok(())
    }

    /// Refuses a patch with a rule longer than `max_bytes` (`limits.max_permission_rule_bytes`).
    /// Every check compares rules with paths, program names and each other, so their length is
    /// bounded as well as their number.
    pub fn check_rule_lengths(&self, max_bytes: usize) -> Result<(), String> {
        for (name, list) in self.lists() {
            if let Some((i, rule)) = list.iter().enumerate().find(|(_, r)| r.len() > max_bytes) {
                let start: String = rule.chars().take(32).collect();
                return Err(format!(
                    "permission rule too long: entry {i} of `{name}` ({start:?}...) is {} bytes, at most {max_bytes} (limits.max_permission_rule_bytes)",
                    rule.len()
                ));
            }
        }
        Ok(())
    }

    /// Both checks: [`Self::check_rule_counts`] and [`Self::check_rule_lengths`].
    pub fn check_rules(&self, max_rules: usize, max_rule_bytes: usize) -> Result<(), String> {
        self.check_rule_counts(max_rules)?;
        self.check_rule_lengths(max_rule_bytes)
    }

    /// The rule lists this patch sets, by name.
    fn lists(&self) -> impl Iterator<Item = (&'static str, &Vec<String>)> {
        let fs = self.filesystem.as_ref();
        [
            ("filesystem.read", fs.and_then(|f| f.read.as_ref())),
            ("filesystem.write", fs.and_then(|f| f.write.as_ref())),
            ("filesystem.blocked", fs.and_then(|f| f.blocked.as_ref())),
            ("exec", self.exec.as_ref()),
            ("blocked_commands", self.blocked_commands.as_ref()),
            ("network", self.network.as_ref()),
            ("http_methods", self.http_methods.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, list)| list.map(|l| (name, l)))
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
        // `*` stops at `/`: each thread's copy needs its own rule.
        "/proc/*/task/*/mem",
        "/proc/*/task/*/environ",
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

/// The `minimal` preset: nothing allowed but what every caller has (NOOP, HELLO, its own state).
pub fn minimal(state_dir: &str) -> Permissions {
    Permissions {
        level: "minimal".into(),
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
    }
}

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
        "minimal" => minimal(state_dir),
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

    /// The allow rules for `access`.
    fn allow_rules(&self, access: FsAccess) -> &[String] {
        match access {
            FsAccess::Read => &self.filesystem.read,
            FsAccess::Write => &self.filesystem.write,
        }
    }

    /// True when this caller's rules reach every path for `access`: `/**` is allowed and
    /// nothing is blocked. A file with several names (hard links) is served only to such a
    /// caller: the other names of a file cannot be found from one of them, and any of them may
    /// be outside a narrower caller's rules (`ln /etc/shadow /tmp/x`).
    pub fn reaches_every_path(&self, access: FsAccess) -> bool {
        self.filesystem.blocked.is_empty() && self.allow_rules(access).iter().any(|r| r == "/**")
    }

    /// True when an allow rule for `access` that matches `resolved` names a directory: its
    /// fixed part, before the first `*`, goes below `/` (`/proc/**`, `/sys/class/net/*`,
    /// `/proc/kmsg`; not `/**` or `/*/environ`). Files on pseudo-filesystems are served only
    /// through such a rule. Blocked rules still win; this only narrows what `may_read` and
    /// `may_write` allow.
    pub fn names_explicitly(&self, resolved: &Path, access: FsAccess) -> bool {
        let Some(text) = resolved.to_str() else {
            return false;
        };
        self.allow_rules(access)
            .iter()
            .any(|rule| names_a_directory(rule) && glob_match(rule, text))
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

    /// May this caller run `command` (shell text, run in `cwd`)? The check splits the text
    /// into simple commands and looks at each program; it is a guard against accidents, not a
    /// sandbox (the shell language is too rich for a text check to be a security boundary:
    /// use the agent sandbox for that). Every program the text names
    /// is checked by the name it is written with **and** by the file it resolves to (a path is
    /// taken from `cwd` with `..` and symlinks resolved; a bare name is looked up in `PATH`,
    /// as the shell will), so neither `/usr/bin/../bin/sudo` nor a symlink `./x -> sudo` gets
    /// past a rule. Rules with a `/` match the resolved path, the others file names. A program
    /// the text only creates while it runs cannot be resolved beforehand: see README.
    pub fn may_exec(&self, command: &str, cwd: &Path) -> Result<(), String> {
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
        // Compiled once: a command may name many programs.
        let blocked: Vec<(&String, Glob)> = self
            .blocked_commands
            .iter()
            .filter(|r| !r.contains(' '))
            .map(|r| (r, Glob::new(r)))
            .collect();
        let allow_all = self.exec.iter().any(|r| r == "*");
        let allowed: Vec<Glob> = self.exec.iter().map(|r| Glob::new(r)).collect();
        let rule_matches =
            |rules: &[Glob], names: &Names| rules.iter().any(|g| names.matched_by(g));
        let programs = program_names(command);
        let mut seen = HashSet::new();
        for program in &programs {
            if !seen.insert(program.as_str()) {
                continue;
            }
            let names = Names::of(program, cwd);
            if let Some((rule, _)) = blocked.iter().find(|(_, g)| names.matched_by(g)) {
                return Err(format!(
                    "permission denied: program {program:?}{} is blocked by rule {rule:?}",
                    names.resolved_note()
                ));
            }
            if allow_all {
                continue;
            }
            // Allowed by the file it resolves to, or by the name it is written with when that
            // name finds the same file in PATH (`python3` -> python3.11 is python3; a symlink
            // `./python3` -> sudo is not).
            let by_file =
                names.resolved.is_some() && rule_matches(&allowed, &names.resolved_only());
            let by_name = rule_matches(&allowed, &names.written_only())
                && names.written_name_finds_same_file(cwd);
            if !by_file && !by_name {
                return Err(format!(
                    "permission denied: program {program:?}{} is not in the allowed list {:?}",
                    names.resolved_note(),
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

/// Rule lists may be long (`limits.max_permission_rules` x `limits.max_permission_rule_bytes`)
/// and these checks run on the event loop, so they look rules up in a set instead of comparing
/// every pair.
fn superset(mine: &[String], theirs: &[String]) -> bool {
    let mine: HashSet<&str> = mine.iter().map(String::as_str).collect();
    theirs.iter().all(|t| mine.contains(t.as_str()))
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

/// Which access a path rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsAccess {
    Read,
    Write,
}

/// Where pseudo-filesystems are mounted on every Linux system. A rule that names a directory
/// in them grants what `/**` does not (see [`Permissions::names_explicitly`]), so it lies
/// within another set only when that set names the tree too: otherwise any caller holding
/// `/**` could give itself `/proc/**`.
const PSEUDO_TREES: [&str; 2] = ["/proc", "/sys"];

/// The fixed beginning of a pattern: everything before its first `*`.
fn fixed_part(pattern: &str) -> &str {
    pattern.find('*').map_or(pattern, |i| &pattern[..i])
}

/// True when the fixed part of `pattern` goes below `/` (see [`Permissions::names_explicitly`]).
fn names_a_directory(pattern: &str) -> bool {
    fixed_part(pattern)
        .strip_prefix('/')
        .is_some_and(|rest| rest.contains('/'))
}

/// True for a rule that names a directory inside one of the [`PSEUDO_TREES`].
fn names_a_pseudo_tree(pattern: &str) -> bool {
    let fixed = fixed_part(pattern);
    names_a_directory(pattern)
        && PSEUDO_TREES.iter().any(|tree| {
            fixed
                .strip_prefix(tree)
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// Conservative pattern coverage: `mine` is within `theirs` when each of its patterns equals one
/// of theirs, or lies under one of their `dir/**` patterns (`/**` covers everything except a
/// rule naming a pseudo-filesystem tree, which only a rule naming that tree covers).
fn patterns_within(mine: &[String], theirs: &[String]) -> bool {
    let everything = theirs.iter().any(|t| t == "/**");
    let exact: HashSet<&str> = theirs.iter().map(String::as_str).collect();
    let dirs: Vec<&str> = theirs
        .iter()
        .filter_map(|t| t.strip_suffix("/**"))
        .filter(|dir| !dir.is_empty() && !dir.contains('*'))
        .collect();
    mine.iter().all(|m| {
        (everything && !names_a_pseudo_tree(m))
            || exact.contains(m.as_str())
            || dirs.iter().any(|dir| {
                m.strip_prefix(dir)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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
    Glob::new(pattern).matches(text)
}

/// One token of a compiled glob. A run of two or more `*` is one `**` (`***` and `**` match the
/// same texts: anything, then a run without `/`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `*`: any run of bytes without `/`.
    Star,
    /// `**`: any run of bytes.
    AnyStar,
}

/// A compiled glob pattern, matched in time linear in the text.
///
/// The pattern is a chain of states, one before each token and one at the end; matching keeps
/// the set of states the text read so far can be in, as a bit set, and updates it once per text
/// byte. That costs O(text length x pattern length / 64) whatever the pattern looks like: unlike
/// backtracking, there is no pattern (`*a*a*a...b`) that makes it explore exponentially many
/// ways, and it uses no recursion, so long patterns cannot exhaust a worker's stack.
pub struct Glob {
    /// Set when the pattern has no `*`: it then matches only itself.
    literal: Option<Vec<u8>>,
    /// Cheap tests first: every matching text starts with `prefix`, ends with `suffix` and is
    /// at least `min_len` bytes long.
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    min_len: usize,
    /// Words per state set.
    words: usize,
    /// Byte value -> row of `byte_masks` (row 0: bytes that occur nowhere in the pattern).
    class: [u16; 256],
    /// Row `c`: the states whose token is a byte of class `c`.
    byte_masks: Vec<u64>,
    /// States whose token is `*`.
    star: Vec<u64>,
    /// States whose token is `**`.
    any_star: Vec<u64>,
    /// States whose token is `*` or `**` (both may match nothing).
    either_star: Vec<u64>,
    /// States in which the whole text matched: the end, and the end of each pattern left by
    /// removing a trailing `/**` (so `/dir/**` also matches `/dir`).
    accept: Vec<u64>,
    /// The pattern contains a `/` (a command rule naming a path rather than a file name).
    slash: bool,
}

/// State sets this small live on the stack.
const INLINE_WORDS: usize = 4;

impl Glob {
    /// Compiles `pattern`. Any text is a valid pattern.
    pub fn new(pattern: &str) -> Glob {
        let p = pattern.as_bytes();
        if !p.contains(&b'*') {
            return Glob {
                literal: Some(p.to_vec()),
                prefix: Vec::new(),
                suffix: Vec::new(),
                min_len: 0,
                words: 0,
                class: [0; 256],
                byte_masks: Vec::new(),
                star: Vec::new(),
                any_star: Vec::new(),
                either_star: Vec::new(),
                accept: Vec::new(),
                slash: p.contains(&b'/'),
            };
        }
        let mut tokens = Vec::with_capacity(p.len());
        let mut i = 0;
        while i < p.len() {
            if p[i] == b'*' {
                let run = p[i..].iter().take_while(|&&b| b == b'*').count();
                tokens.push(if run == 1 {
                    Token::Star
                } else {
                    Token::AnyStar
                });
                i += run;
            } else {
                tokens.push(Token::Byte(p[i]));
                i += 1;
            }
        }
        let states = tokens.len() + 1;
        let words = states.div_ceil(64);
        let mut class = [0u16; 256];
        let mut classes = 1usize;
        for t in &tokens {
            if let Token::Byte(b) = *t
                && class[b as usize] == 0
            {
                class[b as usize] = classes as u16;
                classes += 1;
            }
        }
        let mut byte_masks = vec![0u64; classes * words];
        let mut star = vec![0u64; words];
        let mut any_star = vec![0u64; words];
        let mut accept = vec![0u64; words];
        let set = |v: &mut [u64], state: usize| v[state / 64] |= 1u64 << (state % 64);
        for (state, t) in tokens.iter().enumerate() {
            match *t {
                Token::Byte(b) => {
                    let row = class[b as usize] as usize * words;
                    set(&mut byte_masks[row..row + words], state);
                }
                Token::Star => set(&mut star, state),
                Token::AnyStar => set(&mut any_star, state),
            }
        }
        // Each trailing `/**` is two tokens (`/` and `**`); the pattern without it ends two
        // states earlier.
        let mut end = tokens.len();
        set(&mut accept, end);
        let mut rest = pattern;
        while let Some(dir) = rest.strip_suffix("/**") {
            end -= 2;
            set(&mut accept, end);
            rest = dir;
        }
        let either_star = star.iter().zip(&any_star).map(|(a, b)| a | b).collect();
        // `end` is now the earliest accepting state: every match reads the tokens before it.
        let byte = |t: &Token| match *t {
            Token::Byte(b) => Some(b),
            _ => None,
        };
        let prefix = tokens[..end].iter().map_while(byte).collect();
        let min_len = tokens[..end].iter().filter_map(byte).count();
        // Without a trailing star, the only accepting state is the last, after the bytes that
        // follow the last star.
        let suffix = if p.ends_with(b"*") {
            Vec::new()
        } else {
            let mut v: Vec<u8> = tokens.iter().rev().map_while(byte).collect();
            v.reverse();
            v
        };
        Glob {
            literal: None,
            prefix,
            suffix,
            min_len,
            words,
            class,
            byte_masks,
            star,
            any_star,
            either_star,
            accept,
            slash: p.contains(&b'/'),
        }
    }

    /// True when the pattern contains a `/`.
    pub fn has_slash(&self) -> bool {
        self.slash
    }

    /// Does the whole of `text` match?
    pub fn matches(&self, text: &str) -> bool {
        let text = text.as_bytes();
        if let Some(lit) = &self.literal {
            return lit == text;
        }
        if text.len() < self.min_len
            || !text.starts_with(&self.prefix)
            || !text.ends_with(&self.suffix)
        {
            return false;
        }
        if self.words <= INLINE_WORDS {
            let mut a = [0u64; INLINE_WORDS];
            let mut b = [0u64; INLINE_WORDS];
            self.run(text, &mut a[..self.words], &mut b[..self.words])
        } else {
            let mut a = vec![0u64; self.words];
            let mut b = vec![0u64; self.words];
            self.run(text, &mut a, &mut b)
        }
    }

    fn run<'a>(&self, text: &[u8], mut cur: &'a mut [u64], mut next: &'a mut [u64]) -> bool {
        let last = self.words - 1;
        cur[0] = 1;
        self.close(cur, 0, last);
        // Only words `lo..=top` can hold states. States never move backwards, so `lo` only
        // grows; one byte moves a state at most two places, so at most into the next word.
        // While the text walks through a long literal, only a word or two is touched per byte.
        let (mut lo, mut top) = (0, last.min(1));
        for &c in text {
            let Some((first, high)) = self.step(cur, next, c, lo, top) else {
                return false;
            };
            // Keep both sets empty outside `lo..=top`.
            cur[lo..first].fill(0);
            lo = first;
            top = top.max(last.min(high + 1));
            std::mem::swap(&mut cur, &mut next);
        }
        cur.iter().zip(&self.accept).any(|(s, a)| s & a != 0)
    }

    /// Adds the states reachable by letting a star match nothing. Stars never follow each other
    /// (runs are one token), so one pass is enough.
    fn close(&self, set: &mut [u64], lo: usize, top: usize) {
        let mut carry = 0;
        for (s, stars_at) in set[lo..=top].iter_mut().zip(&self.either_star[lo..=top]) {
            let stars = *s & stars_at;
            *s |= (stars << 1) | carry;
            carry = stars >> 63;
        }
    }

    /// Reads byte `c`: `next` becomes the states reachable from `cur`, which are all within
    /// words `lo..=top`. Returns the first and last word of `next` that hold a state, or `None`
    /// when none does (no continuation of the text can match).
    fn step(
        &self,
        cur: &[u64],
        next: &mut [u64],
        c: u8,
        lo: usize,
        top: usize,
    ) -> Option<(usize, usize)> {
        let row = self.class[c as usize] as usize * self.words;
        let bytes = &self.byte_masks[row..row + self.words];
        let slash = c == b'/';
        let mut carry = 0;
        for w in lo..=top {
            // A byte token that matches moves on one state; a star stays where it is.
            let moved = cur[w] & bytes[w];
            let mut n = (moved << 1) | carry | (cur[w] & self.any_star[w]);
            if !slash {
                n |= cur[w] & self.star[w];
            }
            carry = moved >> 63;
            next[w] = n;
        }
        self.close(next, lo, top);
        let first = (lo..=top).find(|&w| next[w] != 0)?;
        let high = (first..=top).rev().find(|&w| next[w] != 0).unwrap_or(first);
        Some((first, high))
    }
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

/// The names a program of a command is checked by: as written, and as resolved.
struct Names {
    /// The path as written (`./x`, `/usr/bin/sudo`) or the bare name.
    written: String,
    /// Its file name.
    written_base: String,
    /// The file it resolves to (canonical), when it can be found.
    resolved: Option<PathBuf>,
}

impl Names {
    fn of(program: &str, cwd: &Path) -> Names {
        let written_base = program.rsplit('/').next().unwrap_or(program).to_string();
        Names {
            written: program.to_string(),
            written_base,
            resolved: resolve_program(program, cwd),
        }
    }

    fn resolved_base(&self) -> Option<&str> {
        self.resolved.as_deref()?.file_name()?.to_str()
    }

    /// Does `g` match this program? Rules with a `/` look at paths (as written, when
    /// absolute, and as resolved), the others at file names.
    fn matched_by(&self, g: &Glob) -> bool {
        let resolved_path = self.resolved.as_deref().and_then(Path::to_str);
        if g.has_slash() {
            (self.written.starts_with('/') && g.matches(&self.written))
                || resolved_path.is_some_and(|p| g.matches(p))
        } else {
            g.matches(&self.written_base) || self.resolved_base().is_some_and(|b| g.matches(b))
        }
    }

    fn written_only(&self) -> Names {
        Names {
            written: self.written.clone(),
            written_base: self.written_base.clone(),
            resolved: None,
        }
    }

    fn resolved_only(&self) -> Names {
        let r = self.resolved.clone();
        let path = r
            .as_deref()
            .and_then(Path::to_str)
            .unwrap_or_default()
            .to_string();
        Names {
            written_base: self.resolved_base().unwrap_or_default().to_string(),
            written: path,
            resolved: r,
        }
    }

    /// True when the name as written, looked up as a bare name, is the file this program
    /// resolves to (or when neither can be found: a shell builtin or function).
    fn written_name_finds_same_file(&self, cwd: &Path) -> bool {
        match &self.resolved {
            None => true,
            Some(r) => resolve_program(&self.written_base, cwd).as_deref() == Some(r.as_path()),
        }
    }

    /// ` (resolves to /usr/bin/sudo)` when the resolved file has another name.
    fn resolved_note(&self) -> String {
        match &self.resolved {
            Some(r) if self.resolved_base() != Some(self.written_base.as_str()) => {
                format!(" (resolves to {})", r.display())
            }
            _ => String::new(),
        }
    }
}

/// The file a program name refers to: a name with a `/` is taken from `cwd`; a bare name is
/// looked up in the daemon's `PATH` (which commands inherit). Symlinks and `..` are resolved.
/// `None` when nothing is found (a builtin, a function, a name made by expansion).
pub fn resolve_program(program: &str, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.is_empty() || program.len() > 4096 {
        return None;
    }
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = cwd.join(program);
        return std::fs::canonicalize(&p).ok().filter(|c| is_exec(c));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                cwd.join(dir)
            }
        })
        .map(|dir| dir.join(program))
        .find(|p| is_exec(p))
        .and_then(|p| std::fs::canonicalize(p).ok())
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
        assert!(!glob_match("mkfs.*", "mkfs.ext4/x"));
        assert!(glob_match("/a/**/**", "/a"));
        assert!(glob_match("/a/**/**", "/a/b/c"));
        assert!(!glob_match("/a/**/**", "/ab"));
        assert!(glob_match("/a/**/z", "/a/b/c/z"));
        assert!(glob_match("/a/***", "/a/b/c"));
        assert!(!glob_match("/a/***", "/a"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "/"));
        assert!(glob_match("/**", ""));
        assert!(glob_match("*", ""));
        assert!(!glob_match("*", "/"));
    }

    /// The matcher this module used before [`Glob`]: a direct, recursive reading of the
    /// documented semantics, memoised here so that the tests' long inputs finish.
    fn reference_match(pattern: &str, text: &str) -> bool {
        /// `memo[(p.len(), t.len())]`: the answer for these suffixes, once known.
        type Memo = Vec<Vec<Option<bool>>>;
        fn bytes(p: &[u8], t: &[u8], memo: &mut Memo) -> bool {
            if let Some(known) = memo[p.len()][t.len()] {
                return known;
            }
            let result = if p.is_empty() {
                t.is_empty()
            } else if p.starts_with(b"**") {
                (0..=t.len()).any(|i| bytes(&p[2..], &t[i..], memo))
            } else if p[0] == b'*' {
                let mut found = false;
                for i in 0..=t.len() {
                    if bytes(&p[1..], &t[i..], memo) {
                        found = true;
                        break;
                    }
                    if i < t.len() && t[i] == b'/' {
                        break;
                    }
                }
                found
            } else {
                !t.is_empty() && p[0] == t[0] && bytes(&p[1..], &t[1..], memo)
            };
            memo[p.len()][t.len()] = Some(result);
            result
        }
        if let Some(dir) = pattern.strip_suffix("/**")
            && reference_match(dir, text)
        {
            return true;
        }
        let mut memo = vec![vec![None; text.len() + 1]; pattern.len() + 1];
        bytes(pattern.as_bytes(), text.as_bytes(), &mut memo)
    }

    /// Every string over `alphabet` up to `max_len` long.
    fn all_strings(alphabet: &[char], max_len: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max_len {
            let mut next = Vec::new();
            for s in &last {
                for c in alphabet {
                    next.push(format!("{s}{c}"));
                }
            }
            out.extend(next.iter().cloned());
            last = next;
        }
        out
    }

    #[test]
    fn glob_agrees_with_the_reference_on_every_short_input() {
        // Two alphabets: with `b` (literals that differ), and longer ones with only `a`, `/` and
        // `*` (runs of stars, `/**/**` chains).
        let cases = [
            (
                all_strings(&['a', 'b', '/', '*'], 5),
                all_strings(&['a', 'b', '/'], 5),
            ),
            (
                all_strings(&['a', '/', '*'], 7),
                all_strings(&['a', '/'], 6),
            ),
        ];
        for (patterns, texts) in &cases {
            for p in patterns {
                let g = Glob::new(p);
                for t in texts {
                    assert_eq!(
                        g.matches(t),
                        reference_match(p, t),
                        "pattern {p:?} text {t:?}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn glob_agrees_with_the_reference(
            p in "[ab/*]{0,14}(/\\*\\*){0,2}",
            t in "[ab/]{0,24}",
        ) {
            proptest::prop_assert_eq!(glob_match(&p, &t), reference_match(&p, &t));
        }

        /// Patterns longer than one 64-state word, so the carries between words are exercised,
        /// with texts built from the pattern (a star's share is a filler it may match) so that
        /// the deep states are reached, then perhaps broken by one changed byte.
        #[test]
        fn long_globs_agree_with_the_reference(
            pieces in proptest::collection::vec(("[ab/]{0,4}", 0..3u8, "[ab]{0,3}", "[ab/]{0,2}"), 20..45),
            change in proptest::option::of((0..400usize, "[ab/]")),
        ) {
            let mut p = String::new();
            let mut t = String::new();
            for (lit, star, fill, cross) in &pieces {
                p.push_str(lit);
                t.push_str(lit);
                match star {
                    1 => {
                        p.push('*');
                        t.push_str(fill);
                    }
                    2 => {
                        p.push_str("**");
                        t.push_str(fill);
                        t.push_str(cross);
                    }
                    _ => {}
                }
            }
            if let Some((i, c)) = change
                && !t.is_empty()
            {
                let i = i % t.len();
                t.replace_range(i..i + 1, &c);
            }
            proptest::prop_assert_eq!(glob_match(&p, &t), reference_match(&p, &t));
        }
    }

    #[test]
    fn pathological_globs_are_fast_and_need_no_stack() {
        // Backtracking takes time exponential in the number of stars here; recursion took one
        // stack frame per pattern byte. Run on a stack smaller than a worker's.
        let done = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| {
                let start = std::time::Instant::now();
                let stars = format!("{}b", "*a".repeat(2000));
                let text = "a".repeat(4000);
                assert!(!glob_match(&stars, &text));
                assert!(!glob_match(
                    &format!("/{}", stars.replace('*', "**")),
                    &text
                ));
                let long = format!("{}*", "a".repeat(100_000));
                assert!(glob_match(&long, &"a".repeat(100_001)));
                assert!(!glob_match(&long, &"a".repeat(99_999)));
                start.elapsed()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(done < std::time::Duration::from_secs(5), "took {done:?}");
    }

    #[test]
    fn rule_lengths_are_bounded() {
        let long = format!("/tmp/{}", "x".repeat(100));
        let patch = PermsPatch {
            filesystem: Some(FsPatch {
                blocked: Some(vec!["/a".into(), long.clone()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(patch.check_rule_lengths(long.len()).is_ok());
        let e = patch.check_rule_lengths(long.len() - 1).unwrap_err();
        assert!(
            e.contains("entry 1 of `filesystem.blocked`")
                && e.contains(&format!("is {} bytes", long.len()))
                && e.contains("limits.max_permission_rule_bytes"),
            "{e}"
        );
        let e = patch.check_rules(1, 1000).unwrap_err();
        assert!(e.contains("limits.max_permission_rules"), "{e}");
        let e = PermsPatch {
            exec: Some(vec!["é".repeat(40)]),
            ..Default::default()
        }
        .check_rules(10, 10)
        .unwrap_err();
        assert!(e.contains("`exec`") && e.contains("is 80 bytes"), "{e}");
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
    fn every_threads_environment_and_memory_are_blocked() {
        for name in ["standard", "sandboxed", "readonly", "minimal"] {
            let p = level(name);
            for path in [
                "/proc/1/environ",
                "/proc/1/mem",
                "/proc/1/task/1/environ",
                "/proc/1/task/7/mem",
            ] {
                let e = p.may_read(Path::new(path)).unwrap_err();
                assert!(
                    e.contains("blocked") || e.contains("may not"),
                    "{name} {path}: {e}"
                );
            }
        }
    }

    #[test]
    fn pseudo_filesystems_need_a_rule_that_names_a_directory() {
        let std = level("standard");
        let proc = Path::new("/proc/1/status");
        assert!(std.may_read(proc).is_ok());
        assert!(!std.names_explicitly(proc, FsAccess::Read));
        let named = std.patched(&PermsPatch {
            filesystem: Some(FsPatch {
                read: Some(vec!["/**".into(), "/proc/**".into()]),
                write: Some(vec!["/sys/kernel/**".into()]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(named.names_explicitly(proc, FsAccess::Read));
        assert!(!named.names_explicitly(proc, FsAccess::Write));
        assert!(named.names_explicitly(Path::new("/sys/kernel/x"), FsAccess::Write));
        assert!(!named.names_explicitly(Path::new("/sys/class/x"), FsAccess::Read));
        for (rule, names) in [
            ("/**", false),
            ("/*/environ", false),
            ("/p*/**", false),
            ("/proc", false),
            ("/proc/**", true),
            ("/proc/kmsg", true),
            ("/sys/class/net/*", true),
        ] {
            assert_eq!(names_a_directory(rule), names, "{rule}");
        }
        // A caller holding `/**` cannot give itself a rule naming /proc or /sys; one holding
        // such a rule can keep or narrow it.
        assert!(!named.within(&std));
        let narrower = named.patched(&PermsPatch {
            filesystem: Some(FsPatch {
                read: Some(vec!["/proc/1/**".into(), "/tmp/**".into()]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(narrower.within(&named));
        assert!(!narrower.within(&std));
        for rule in ["/procfs/**", "/tmp/proc/**", "/p*/**"] {
            let p = std.patched(&PermsPatch {
                filesystem: Some(FsPatch {
                    read: Some(vec![rule.into()]),
                    ..Default::default()
                }),
                ..Default::default()
            });
            assert!(p.within(&std), "{rule}");
        }
    }

    #[test]
    fn only_rules_reaching_every_path_serve_files_with_several_names() {
        let all = level("unrestricted");
        assert!(all.reaches_every_path(FsAccess::Read));
        assert!(all.reaches_every_path(FsAccess::Write));
        assert!(!level("standard").reaches_every_path(FsAccess::Read));
        assert!(!level("sandboxed").reaches_every_path(FsAccess::Write));
        let one_block = all.patched(&PermsPatch {
            filesystem: Some(FsPatch {
                blocked: Some(vec!["/secret/**".into()]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(!one_block.reaches_every_path(FsAccess::Read));
    }

    impl Permissions {
        fn may_exec_here(&self, command: &str) -> Result<(), String> {
            self.may_exec(command, Path::new("/"))
        }
    }

    #[test]
    fn commands() {
        let std = level("standard");
        assert!(std.may_exec_here("ls -la /tmp | wc -l").is_ok());
        assert!(std.may_exec_here("echo hi; sudo ls").is_err());
        assert!(std.may_exec_here("FOO=1 /usr/bin/sudo ls").is_err());
        assert!(std.may_exec_here("echo $(dd if=/dev/zero)").is_err());
        assert!(std.may_exec_here("rm  -rf   /").is_err());
        assert!(std.may_exec_here("rm -rf /tmp/x").is_ok());
        assert!(std.may_exec_here("mkfs.ext4 /dev/sda").is_err());
        let only_echo = std.patched(&PermsPatch {
            exec: Some(vec!["echo".into()]),
            ..Default::default()
        });
        assert!(only_echo.may_exec_here("echo hi").is_ok());
        assert!(
            only_echo
                .may_exec_here("echo hi && cat /etc/passwd")
                .is_err()
        );
        assert!(level("readonly").may_exec_here("echo hi").is_err());
    }

    #[test]
    fn commands_are_checked_by_the_file_they_resolve_to() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = std::env::temp_dir().join(format!("clove-perms-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let real = dir.join("realtool");
        std::fs::write(&real, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink(&real, dir.join("alias")).unwrap();
        let base = level("unrestricted");
        let blocked = base.patched(&PermsPatch {
            blocked_commands: Some(vec!["realtool".into()]),
            ..Default::default()
        });
        for cmd in ["./alias -x", "sub/../alias", "true; ./alias", "realtool"] {
            let e = blocked.may_exec(cmd, &dir).unwrap_err();
            assert!(e.contains("realtool"), "{cmd}: {e}");
        }
        assert!(
            blocked.may_exec("./sub", &dir).is_ok(),
            "a directory is not a program"
        );
        // A rule with a slash names a path.
        let by_path = base.patched(&PermsPatch {
            blocked_commands: Some(vec![format!("{}/*", dir.display())]),
            ..Default::default()
        });
        assert!(by_path.may_exec("./alias", &dir).is_err());
        assert!(by_path.may_exec("echo hi", &dir).is_ok());
        // The allow-list: a name is allowed when it finds the same file as the bare name
        // would, or when the file it resolves to is allowed.
        let only_alias = base.patched(&PermsPatch {
            exec: Some(vec!["alias".into()]),
            ..Default::default()
        });
        let e = only_alias.may_exec("./alias", &dir).unwrap_err();
        assert!(e.contains("resolves to"), "{e}");
        let only_real = base.patched(&PermsPatch {
            exec: Some(vec!["realtool".into()]),
            ..Default::default()
        });
        assert!(only_real.may_exec("./alias", &dir).is_ok());
        let sh = base.patched(&PermsPatch {
            exec: Some(vec!["sh".into()]),
            ..Default::default()
        });
        assert!(
            sh.may_exec("sh -c true", &dir).is_ok(),
            "sh may resolve to dash"
        );
        assert!(sh.may_exec("/bin/sh -c true", &dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
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
