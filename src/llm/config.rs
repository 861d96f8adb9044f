//! The `[llm]` configuration section: which model backends exist, how to reach them, and the
//! limits of the fair queue in front of them.
//!
//! With no models configured (no `[llm]` section, or one without `[llm.models.*]`), the usual
//! environment conventions configure one default backend: `OPENAI_BASE_URL`, `OPENAI_API_KEY`,
//! `OPENAI_MODEL` (as the OpenAI SDKs read them), else `GEMINI_API_KEY` or `GOOGLE_API_KEY`.
//! API keys are read once at start-up and kept in [`Secret`], whose `Debug` output is redacted,
//! so `clove check-config` and logs never show them.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// The OpenAI API's base URL, used when `OPENAI_BASE_URL` is not set.
pub const OPENAI_DEFAULT_BASE: &str = "https://api.openai.com/v1";
/// The model used when only `OPENAI_API_KEY` is set.
pub const OPENAI_DEFAULT_MODEL: &str = "gpt-4o-mini";
/// The Gemini API's base URL.
pub const GEMINI_DEFAULT_BASE: &str = "https://generativelanguage.googleapis.com/v1beta";
/// The model used when only `GEMINI_API_KEY` / `GOOGLE_API_KEY` is set.
pub const GEMINI_DEFAULT_MODEL: &str = "gemini-2.5-flash";

/// `[llm]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlm {
    /// Name of the model THINK uses when the request names none.
    pub default: Option<String>,
    /// Concurrent calls per backend unless the model says otherwise.
    pub concurrency: Option<usize>,
    /// Requests one agent may have waiting for one backend.
    pub queue_per_agent: Option<usize>,
    /// Requests waiting for one backend, all agents together.
    pub max_queued: Option<usize>,
    pub connect_timeout_secs: Option<f64>,
    /// Budget for one THINK, all attempts and back-off included.
    pub timeout_secs: Option<f64>,
    /// Attempts after the first on 429, 5xx and connection failures.
    pub max_retries: Option<u32>,
    pub backoff_initial_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    /// Largest backend response read.
    pub max_response_bytes: Option<u64>,
    /// PEM bundle of extra trusted CAs for every model that sets no `ca_file` of its own
    /// (including the one configured from the environment).
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
}

/// `[llm.models.NAME]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// `openai` (any OpenAI-compatible chat-completions server: vLLM, llama.cpp, Ollama, ...)
    /// or `gemini`.
    pub provider: Option<String>,
    pub base_url: Option<String>,
    /// The model id sent to the backend. Defaults to the entry's name.
    pub model: Option<String>,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// File holding the API key (must not be readable by group or others).
    pub api_key_file: Option<PathBuf>,
    pub concurrency: Option<usize>,
    pub timeout_secs: Option<f64>,
    /// OpenAI only: `max_tokens` (most servers) or `max_completion_tokens` (OpenAI's newer
    /// models). Defaults to the latter for api.openai.com, the former elsewhere.
    pub max_tokens_field: Option<String>,
    /// PEM bundle of extra trusted CAs (a site-internal CA), added to the public roots.
    pub ca_file: Option<PathBuf>,
}

/// A secret string (an API key). Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Which wire format a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI chat completions (`POST {base}/chat/completions`).
    OpenAi,
    /// Gemini `POST {base}/models/{model}:generateContent`.
    Gemini,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Gemini => "gemini",
        }
    }
}

/// One configured model backend.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The name THINK's `model` field uses.
    pub name: String,
    pub provider: Provider,
    /// Without a trailing slash.
    pub base_url: String,
    /// The model id sent to the backend.
    pub model: String,
    pub api_key: Option<Secret>,
    pub concurrency: usize,
    pub timeout: Duration,
    /// OpenAI only: the request field that carries `max_tokens`.
    pub max_tokens_field: String,
    /// Extra trusted CAs (`ca_file` of the model, else of `[llm]`).
    pub ca: Option<crate::tls::CaBundle>,
}

/// The validated `[llm]` section.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    pub models: Vec<ModelConfig>,
    /// Index into `models` of the default model, if any model exists.
    pub default: Option<usize>,
    /// Where the models came from: `config`, `environment (OPENAI_*)`, ...
    pub source: String,
    pub queue_per_agent: usize,
    pub max_queued: usize,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_response_bytes: u64,
}

impl Default for LlmConfig {
    fn default() -> LlmConfig {
        let mut errors = Vec::new();
        LlmConfig::build(None, &|_| None, &mut errors)
    }
}

impl LlmConfig {
    /// Validates the section, reading the process environment for keys and the fallback.
    pub fn from_raw(raw: Option<&RawLlm>, errors: &mut Vec<String>) -> LlmConfig {
        LlmConfig::build(
            raw,
            &|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()),
            errors,
        )
    }

    /// Validates the section with `env` as the environment (tests pass their own).
    pub fn build(
        raw: Option<&RawLlm>,
        env: &dyn Fn(&str) -> Option<String>,
        errors: &mut Vec<String>,
    ) -> LlmConfig {
        let empty = RawLlm::default();
        let r = raw.unwrap_or(&empty);
        let mut count = |name: &str, v: Option<usize>, default: usize, max: usize| match v {
            None => default,
            Some(n) if (1..=max).contains(&n) => n,
            Some(n) => {
                errors.push(format!("llm.{name}: {n} must be between 1 and {max}"));
                default
            }
        };
        let concurrency = count("concurrency", r.concurrency, 4, 256);
        let queue_per_agent = count("queue_per_agent", r.queue_per_agent, 32, 1 << 16);
        let max_queued = count("max_queued", r.max_queued, 1024, 1 << 20);
        let connect_timeout = secs(
            errors,
            "llm.connect_timeout_secs",
            r.connect_timeout_secs,
            10.0,
        );
        let timeout = secs(errors, "llm.timeout_secs", r.timeout_secs, 120.0);
        let max_retries = match r.max_retries {
            None => 3,
            Some(n) if n <= 20 => n,
            Some(n) => {
                errors.push(format!("llm.max_retries: {n} must be at most 20"));
                3
            }
        };
        let mut millis = |name: &str, v: Option<u64>, default: u64| match v {
            None => Duration::from_millis(default),
            Some(n) if (1..=3_600_000).contains(&n) => Duration::from_millis(n),
            Some(n) => {
                errors.push(format!("llm.{name}: {n} must be between 1 and 3600000"));
                Duration::from_millis(default)
            }
        };
        let backoff_initial = millis("backoff_initial_ms", r.backoff_initial_ms, 500);
        let backoff_max = millis("backoff_max_ms", r.backoff_max_ms, 20_000);
        if backoff_initial > backoff_max {
            errors.push("llm.backoff_initial_ms is larger than llm.backoff_max_ms".into());
        }
        let max_response_bytes = match r.max_response_bytes {
            None => 16 << 20,
            Some(n) if (1024..=(1 << 30)).contains(&n) => n,
            Some(n) => {
                errors.push(format!(
                    "llm.max_response_bytes: {n} must be between 1024 and 1073741824"
                ));
                16 << 20
            }
        };

        let default_ca = r
            .ca_file
            .as_deref()
            .and_then(|p| crate::tls::CaBundle::load(p, "llm.ca_file", errors));
        let mut models = Vec::new();
        let source;
        if r.models.is_empty() {
            match from_environment(env, concurrency, timeout) {
                Some((mut m, src)) => {
                    m.ca = default_ca;
                    models.push(m);
                    source = src;
                }
                None => source = "none".to_string(),
            }
            if let Some(d) = &r.default {
                errors.push(format!(
                    "llm.default: {d:?} names no model (no [llm.models.*] is configured)"
                ));
            }
        } else {
            source = "config".to_string();
            for (name, m) in &r.models {
                if let Some(mut model) = model_from_raw(name, m, env, concurrency, timeout, errors)
                {
                    if m.ca_file.is_none() {
                        model.ca = default_ca.clone();
                    }
                    models.push(model);
                }
            }
        }
        let default = match &r.default {
            Some(d) => {
                let found = models.iter().position(|m| &m.name == d);
                if found.is_none() && !r.models.is_empty() && r.models.contains_key(d) {
                    // The model itself had errors, already reported.
                } else if found.is_none() && !r.models.is_empty() {
                    errors.push(format!(
                        "llm.default: no model named {d:?} (configured: {})",
                        r.models.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                found
            }
            None if models.len() == 1 => Some(0),
            None if models.len() > 1 => {
                errors.push(format!(
                    "llm.default: several models are configured ({}); name the default one",
                    models
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                None
            }
            None => None,
        };
        LlmConfig {
            models,
            default,
            source,
            queue_per_agent,
            max_queued,
            connect_timeout,
            max_retries,
            backoff_initial,
            backoff_max,
            max_response_bytes,
        }
    }

    /// The model a THINK request selects: by configured name, else by backend model id;
    /// `None` selects the default.
    pub fn select(&self, name: Option<&str>) -> Result<usize, String> {
        if self.models.is_empty() {
            return Err(NO_BACKEND.into());
        }
        match name {
            None => self
                .default
                .ok_or_else(|| "no default model is configured: set llm.default".to_string()),
            Some(n) => self
                .models
                .iter()
                .position(|m| m.name == n)
                .or_else(|| self.models.iter().position(|m| m.model == n))
                .ok_or_else(|| {
                    format!(
                        "unknown model {n:?}: configured models are {}",
                        self.models
                            .iter()
                            .map(|m| format!("{:?}", m.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }),
        }
    }
}

/// The error THINK gives when no backend exists.
pub const NO_BACKEND: &str = "no LLM backend is configured: add an [llm.models.NAME] section \
(provider, base_url, model, api_key_env) to the clove config, or start clove with \
OPENAI_API_KEY (and optionally OPENAI_BASE_URL, OPENAI_MODEL) or GEMINI_API_KEY set";

fn secs(errors: &mut Vec<String>, name: &str, v: Option<f64>, default: f64) -> Duration {
    match v {
        None => Duration::from_secs_f64(default),
        Some(x) if x.is_finite() && x > 0.0 && x <= 86400.0 => Duration::from_secs_f64(x),
        Some(x) => {
            errors.push(format!(
                "{name}: {x} must be a number of seconds in (0, 86400]"
            ));
            Duration::from_secs_f64(default)
        }
    }
}

/// The default backend from the environment, if one is described there.
fn from_environment(
    env: &dyn Fn(&str) -> Option<String>,
    concurrency: usize,
    timeout: Duration,
) -> Option<(ModelConfig, String)> {
    let openai_key = env("OPENAI_API_KEY");
    let openai_base = env("OPENAI_BASE_URL");
    if openai_key.is_some() || openai_base.is_some() {
        let base_url = openai_base
            .unwrap_or_else(|| OPENAI_DEFAULT_BASE.to_string())
            .trim_end_matches('/')
            .to_string();
        let max_tokens_field = default_max_tokens_field(&base_url);
        return Some((
            ModelConfig {
                name: "openai".into(),
                provider: Provider::OpenAi,
                model: env("OPENAI_MODEL").unwrap_or_else(|| OPENAI_DEFAULT_MODEL.into()),
                base_url,
                api_key: openai_key.map(Secret::new),
                concurrency,
                timeout,
                max_tokens_field,
                ca: None,
            },
            "environment (OPENAI_*)".into(),
        ));
    }
    let (var, key) = match env("GEMINI_API_KEY") {
        Some(k) => ("GEMINI_API_KEY", k),
        None => ("GOOGLE_API_KEY", env("GOOGLE_API_KEY")?),
    };
    Some((
        ModelConfig {
            name: "gemini".into(),
            provider: Provider::Gemini,
            base_url: env("GEMINI_BASE_URL")
                .unwrap_or_else(|| GEMINI_DEFAULT_BASE.into())
                .trim_end_matches('/')
                .to_string(),
            model: env("GEMINI_MODEL").unwrap_or_else(|| GEMINI_DEFAULT_MODEL.into()),
            api_key: Some(Secret::new(key)),
            concurrency,
            timeout,
            max_tokens_field: "maxOutputTokens".into(),
            ca: None,
        },
        format!("environment ({var})"),
    ))
}

fn default_max_tokens_field(base_url: &str) -> String {
    if host_of(base_url).is_some_and(|h| h == "api.openai.com") {
        "max_completion_tokens".into()
    } else {
        "max_tokens".into()
    }
}

/// The host of an http(s) URL, lowercased, or `None` if it is not one.
fn host_of(url: &str) -> Option<String> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return None,
    }
    uri.host().map(|h| h.to_ascii_lowercase())
}

fn model_from_raw(
    name: &str,
    m: &RawModel,
    env: &dyn Fn(&str) -> Option<String>,
    default_concurrency: usize,
    default_timeout: Duration,
    errors: &mut Vec<String>,
) -> Option<ModelConfig> {
    let before = errors.len();
    let key = format!("llm.models.{name}");
    if name.is_empty() || name.len() > 128 {
        errors.push(format!("{key}: the name must be 1 to 128 characters"));
    }
    let provider = match m.provider.as_deref() {
        None | Some("openai") => Provider::OpenAi,
        Some("gemini") => Provider::Gemini,
        Some(other) => {
            errors.push(format!(
                "{key}.provider: unknown provider {other:?} (use \"openai\" for any \
                 OpenAI-compatible server, or \"gemini\")"
            ));
            Provider::OpenAi
        }
    };
    let base_url = match (&m.base_url, provider) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Provider::Gemini) => GEMINI_DEFAULT_BASE.to_string(),
        (None, Provider::OpenAi) => OPENAI_DEFAULT_BASE.to_string(),
    };
    if host_of(&base_url).is_none() {
        errors.push(format!(
            "{key}.base_url: {base_url:?} is not an http:// or https:// URL with a host"
        ));
    }
    let model = m.model.clone().unwrap_or_else(|| name.to_string());
    if model.is_empty() {
        errors.push(format!("{key}.model: must not be empty"));
    }
    let concurrency = match m.concurrency {
        None => default_concurrency,
        Some(n) if (1..=256).contains(&n) => n,
        Some(n) => {
            errors.push(format!("{key}.concurrency: {n} must be between 1 and 256"));
            default_concurrency
        }
    };
    let timeout = match m.timeout_secs {
        None => default_timeout,
        v => secs(errors, &format!("{key}.timeout_secs"), v, 120.0),
    };
    let max_tokens_field = match (provider, m.max_tokens_field.as_deref()) {
        (Provider::Gemini, None) => "maxOutputTokens".to_string(),
        (Provider::Gemini, Some(_)) => {
            errors.push(format!(
                "{key}.max_tokens_field: only applies to provider \"openai\""
            ));
            "maxOutputTokens".to_string()
        }
        (Provider::OpenAi, None) => default_max_tokens_field(&base_url),
        (Provider::OpenAi, Some(f @ ("max_tokens" | "max_completion_tokens"))) => f.to_string(),
        (Provider::OpenAi, Some(other)) => {
            errors.push(format!(
                "{key}.max_tokens_field: {other:?} must be \"max_tokens\" or \
                 \"max_completion_tokens\""
            ));
            "max_tokens".to_string()
        }
    };
    let api_key = match (&m.api_key_env, &m.api_key_file) {
        (Some(_), Some(_)) => {
            errors.push(format!("{key}: give api_key_env or api_key_file, not both"));
            None
        }
        (Some(var), None) => {
            if !crate::secrets::is_secret_env(var) {
                errors.push(format!(
                    "{key}.api_key_env: {var:?} would be passed on to commands agents run; \
                     use a variable whose name contains API_KEY, TOKEN or SECRET"
                ));
                None
            } else {
                match env(var) {
                    Some(v) => Some(Secret::new(v.trim())),
                    None => {
                        errors.push(format!(
                            "{key}.api_key_env: environment variable {var} is not set"
                        ));
                        None
                    }
                }
            }
        }
        (None, Some(path)) => read_key_file(path, &format!("{key}.api_key_file"), errors),
        (None, None) if provider == Provider::Gemini => {
            match env("GEMINI_API_KEY").or_else(|| env("GOOGLE_API_KEY")) {
                Some(k) => Some(Secret::new(k.trim())),
                None => {
                    errors.push(format!(
                        "{key}: a gemini backend needs a key: set api_key_env, api_key_file, \
                         or GEMINI_API_KEY / GOOGLE_API_KEY"
                    ));
                    None
                }
            }
        }
        // OpenAI-compatible servers inside a cluster often need no key at all.
        (None, None) => None,
    };
    let ca = m
        .ca_file
        .as_deref()
        .and_then(|p| crate::tls::CaBundle::load(p, &format!("{key}.ca_file"), errors));
    if errors.len() > before {
        return None;
    }
    Some(ModelConfig {
        name: name.to_string(),
        provider,
        base_url,
        model,
        api_key,
        concurrency,
        timeout,
        max_tokens_field,
        ca,
    })
}

fn read_key_file(path: &std::path::Path, key: &str, errors: &mut Vec<String>) -> Option<Secret> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            errors.push(format!("{key}: cannot read {}: {e}", path.display()));
            return None;
        }
    };
    if meta.mode() & 0o077 != 0 {
        errors.push(format!(
            "{key}: {} is readable by other users (mode {:o}); run chmod 600 on it",
            path.display(),
            meta.mode() & 0o777
        ));
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
        Ok(_) => {
            errors.push(format!("{key}: {} is empty", path.display()));
            None
        }
        Err(e) => {
            errors.push(format!("{key}: cannot read {}: {e}", path.display()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str, vars: &[(&str, &str)]) -> (LlmConfig, Vec<String>) {
        #[derive(Deserialize)]
        struct Wrap {
            llm: Option<RawLlm>,
        }
        let w: Wrap = toml::from_str(toml_text).unwrap();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mut errors = Vec::new();
        let c = LlmConfig::build(w.llm.as_ref(), &env, &mut errors);
        (c, errors)
    }

    #[test]
    fn no_section_no_env_means_no_backend() {
        let (c, e) = build("", &[]);
        assert!(e.is_empty());
        assert!(c.models.is_empty());
        assert!(c.select(None).unwrap_err().contains("OPENAI_API_KEY"));
    }

    #[test]
    fn openai_environment() {
        let (c, e) = build(
            "",
            &[
                ("OPENAI_API_KEY", "sk-1"),
                ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"),
                ("OPENAI_MODEL", "llama"),
                ("GEMINI_API_KEY", "g"),
            ],
        );
        assert!(e.is_empty(), "{e:?}");
        let m = &c.models[c.select(None).unwrap()];
        assert_eq!(m.provider, Provider::OpenAi);
        assert_eq!(m.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(m.model, "llama");
        assert_eq!(m.max_tokens_field, "max_tokens");
        assert_eq!(m.api_key.as_ref().unwrap().expose(), "sk-1");
        assert!(!format!("{c:?}").contains("sk-1"), "keys are redacted");
        assert_eq!(c.select(Some("llama")).unwrap(), 0);
        assert_eq!(c.select(Some("openai")).unwrap(), 0);
        assert!(c.select(Some("other")).is_err());
    }

    #[test]
    fn gemini_environment() {
        let (c, e) = build("", &[("GOOGLE_API_KEY", "g-1")]);
        assert!(e.is_empty(), "{e:?}");
        let m = &c.models[0];
        assert_eq!(m.provider, Provider::Gemini);
        assert_eq!(m.base_url, GEMINI_DEFAULT_BASE);
        assert_eq!(c.source, "environment (GOOGLE_API_KEY)");
    }

    #[test]
    fn configured_models() {
        let (c, e) = build(
            "[llm]\ndefault = \"b\"\n[llm.models.a]\nbase_url = \"http://h:1/v1\"\n\
             [llm.models.b]\nprovider = \"gemini\"\napi_key_env = \"MY_API_KEY\"\nconcurrency = 2\n",
            &[("MY_API_KEY", "k"), ("OPENAI_API_KEY", "ignored")],
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.models[c.default.unwrap()].name, "b");
        assert_eq!(c.models[1].concurrency, 2);
        assert!(c.models[0].api_key.is_none());
    }

    #[test]
    fn errors_are_collected() {
        let (_, e) = build(
            "[llm]\nconcurrency = 0\n[llm.models.a]\nprovider = \"x\"\nbase_url = \"ftp://h\"\n\
             api_key_env = \"PLAIN\"\n[llm.models.b]\napi_key_env = \"MISSING_API_KEY\"\n",
            &[],
        );
        assert_eq!(e.len(), 5, "{e:#?}");
        assert!(
            e.iter().any(|m| m.contains("MISSING_API_KEY is not set")),
            "{e:#?}"
        );
        let (_, e) = build("[llm]\ndefault = \"zz\"\n[llm.models.a]\n", &[]);
        assert!(e[0].contains("no model named"), "{e:?}");
    }

    #[test]
    fn a_model_ca_file_takes_the_place_of_the_llm_one() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let pem = |name: &str, n: usize| {
            let mut text = String::new();
            for c in &webpki_root_certs::TLS_SERVER_ROOT_CERTS[..n] {
                let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
                text.push_str("-----BEGIN CERTIFICATE-----\n");
                for line in b64.as_bytes().chunks(64) {
                    text.push_str(std::str::from_utf8(line).unwrap());
                    text.push('\n');
                }
                text.push_str("-----END CERTIFICATE-----\n");
            }
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let (one, two) = (pem("one.pem", 1), pem("two.pem", 2));
        let (c, e) = build(
            &format!(
                "[llm]\ndefault = \"a\"\nca_file = \"{one}\"\n[llm.models.a]\n\
                 [llm.models.b]\nca_file = \"{two}\"\n"
            ),
            &[],
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.models[0].ca.as_ref().map(|b| b.len()), Some(1));
        assert_eq!(c.models[1].ca.as_ref().map(|b| b.len()), Some(2));
        let (c, e) = build(
            &format!("[llm]\nca_file = \"{two}\"\n"),
            &[("OPENAI_API_KEY", "k")],
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.models[0].ca.as_ref().map(|b| b.len()), Some(2));
    }
}
