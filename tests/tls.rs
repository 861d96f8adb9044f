//! HTTPS to servers signed by a site-internal CA: refused with a clear certificate error by
//! default, trusted once `http.ca_file` / `ca_file` (per model or in `[llm]`) names the CA;
//! a bad `ca_file` stops the daemon before it starts. The fakes are real TLS servers on
//! loopback with a CA made by `openssl` at test time.

use crate::fakes::{Api, FakeLlm, FakeServer, Recorded, Reply, TestCa};
use crate::harness::{Daemon, op};
use serde_json::json;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "sk-tls-test-31c7";

fn secure_site(ca: &TestCa) -> FakeServer {
    FakeServer::start_tls(ca.server.clone(), |req: &Recorded| {
        Reply::new(200, format!("internal {}", req.path)).header("Content-Type", "text/plain")
    })
}

#[test]
fn http_op_trusts_a_site_ca_only_when_configured() {
    let ca = TestCa::new();
    let site = secure_site(&ca);
    let url = site.url("/status");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // Public roots only: the handshake fails, nothing is sent, and the error says why.
    let d = Daemon::start();
    let mut c = d.client();
    let e = c.err(op::HTTP, json!({"url": url}));
    assert!(
        e.contains("TLS certificate of 127.0.0.1 is not accepted")
            && e.contains("not issued by a trusted CA")
            && e.contains("http.ca_file"),
        "{e}"
    );
    assert!(site.requests().is_empty(), "{:?}", site.requests());
    drop(c);
    drop(d);

    let d = Daemon::with_config(&format!("[http]\nca_file = \"{}\"\n", ca.ca_pem.display()));
    let mut c = d.client();
    let r = c.ok(op::HTTP, json!({"url": url}));
    assert_eq!(r["status_code"], 200, "{r}");
    assert_eq!(r["body"], "internal /status");
    assert_eq!(site.requests().len(), 1);
    assert!(
        d.logs().contains("trusting 1 certificate(s)"),
        "{}",
        d.logs()
    );

    // Only the configured CA is added: a server signed by another one is still refused.
    let other = TestCa::new();
    let stranger = secure_site(&other);
    let e = c.err(op::HTTP, json!({"url": stranger.url("/")}));
    assert!(e.contains("not issued by a trusted CA"), "{e}");
}

fn llm_config(base: &str, llm: &str, model: &str) -> String {
    format!(
        "[llm]\nmax_retries = 2\nbackoff_initial_ms = 10\n{llm}\n[llm.models.internal]\n\
         base_url = \"{base}\"\nmodel = \"llama-tls\"\napi_key_env = \"CLOVE_TEST_API_KEY\"\n\
         {model}\n"
    )
}

#[test]
fn think_over_https_trusts_the_configured_ca() {
    let ca = TestCa::new();
    let fake = FakeLlm::start_tls(Api::OpenAi, Some(KEY), ca.server.clone());
    let base = fake.base_url(Api::OpenAi);
    assert!(base.starts_with("https://"), "{base}");
    let env = [("CLOVE_TEST_API_KEY", KEY)];

    // No ca_file: a clear certificate error at once, not retried (retries would not help).
    let d = Daemon::with_config_env(&llm_config(&base, "", ""), &env);
    let mut c = d.client();
    let e = c.err(op::THINK, json!({"prompt": "hello"}));
    assert!(
        e.contains("TLS certificate is not accepted")
            && e.contains("not issued by a trusted CA")
            && e.contains("ca_file")
            && !e.contains("gave up"),
        "{e}"
    );
    assert!(fake.server.requests().is_empty());
    drop(c);
    drop(d);

    // The model's own ca_file.
    let model_ca = format!("ca_file = \"{}\"", ca.ca_pem.display());
    let d = Daemon::with_config_env(&llm_config(&base, "", &model_ca), &env);
    let mut c = d.client();
    let r = c.ok(op::THINK, json!({"prompt": "over tls"}));
    assert_eq!(r["content"], "echo: over tls", "{r}");
    assert_eq!(fake.server.requests().len(), 1);
    drop(c);
    drop(d);

    // `[llm] ca_file` covers the model configured from the environment.
    let d = Daemon::with_config_env(
        &format!("[llm]\nca_file = \"{}\"\n", ca.ca_pem.display()),
        &[("OPENAI_BASE_URL", &base), ("OPENAI_API_KEY", KEY)],
    );
    let mut c = d.client();
    let r = c.ok(op::THINK, json!({"prompt": "from env"}));
    assert_eq!(r["content"], "echo: from env", "{r}");
    assert!(d.logs().contains("trusts 1 certificate(s)"), "{}", d.logs());
}

/// Runs a command that must exit by itself within 20 s.
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the daemon did not exit within 20s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_bad_ca_file_stops_the_daemon_naming_key_and_file() {
    let mut d = Daemon::start();
    d.stop();
    let missing = d.path("missing.pem");
    let no_certs = d.path("notes.pem");
    std::fs::write(&no_certs, "this is not a certificate\n").unwrap();
    let bad_pem = d.path("bad.pem");
    std::fs::write(
        &bad_pem,
        "-----BEGIN CERTIFICATE-----\nnot*base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let not_x509 = d.path("garbage.pem");
    std::fs::write(
        &not_x509,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &d.config_path,
        format!(
            "[http]\nca_file = \"{}\"\n[llm]\nca_file = \"{}\"\ndefault = \"a\"\n\
             [llm.models.a]\nbase_url = \"https://127.0.0.1:9/v1\"\nca_file = \"{}\"\n\
             [llm.models.b]\nbase_url = \"https://127.0.0.1:9/v1\"\nca_file = \"{}\"\n",
            missing.display(),
            no_certs.display(),
            bad_pem.display(),
            not_x509.display()
        ),
    )
    .unwrap();
    let out = run(d.command());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("clove: ready"));
    for (key, file, what) in [
        ("http.ca_file", &missing, "cannot read"),
        ("llm.ca_file", &no_certs, "holds no certificate"),
        ("llm.models.a.ca_file", &bad_pem, "not valid PEM"),
        (
            "llm.models.b.ca_file",
            &not_x509,
            "certificate 1 is not usable as a trust root",
        ),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no error for {key}:\n{stderr}"));
        assert!(
            line.contains(&file.display().to_string()) && line.contains(what),
            "{key}: {line}"
        );
    }
}
