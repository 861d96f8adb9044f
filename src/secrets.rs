//! What counts as a secret in an environment: variables that are never passed to the processes
//! the daemon starts for callers, and never shown.

/// Environment variables never passed to commands or agents: the daemon may hold API keys and
/// tokens that the processes it runs for agents must not see.
pub fn is_secret_env(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["API_KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"]
        .iter()
        .any(|w| upper.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_env_names() {
        assert!(is_secret_env("OPENAI_API_KEY"));
        assert!(is_secret_env("GITHUB_TOKEN"));
        assert!(!is_secret_env("PATH"));
        assert!(!is_secret_env("HOME"));
    }
}
