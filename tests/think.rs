//! THINK against fake OpenAI-compatible and Gemini APIs on loopback: wire formats, keys,
//! quotas, fair scheduling, retries, timeouts, async results and the `clove think` CLI.

use crate::fakes::{Api, FakeLlm, Reply, TOTAL_TOKENS, dead_port, http_date, prompt_of};
use crate::harness::{BIN, Client, Daemon, op, wait_for};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const KEY: &str = "sk-test-7f3a9c-secret";

/// A config with one OpenAI-compatible model `local` at `base`; `llm` lines go in `[llm]`.
fn openai_config(base: &str, llm: &str) -> String {
    format!(
        "[llm]\n{llm}\n[llm.models.local]\nprovider = \"openai\"\nbase_url = \"{base}\"\n\
         model = \"llama-test\"\napi_key_env = \"CLOVE_TEST_API_KEY\"\n"
    )
}

fn openai_daemon(fake: &FakeLlm, llm: &str) -> Daemon {
    Daemon::with_config_env(
        &openai_config(&fake.base_url(Api::OpenAi), llm),
        &[("CLOVE_TEST_API_KEY", KEY)],
    )
}

/// Polls ASYNC_POLL until `n` results arrived; returns their parsed payloads with request ids.
fn collect_async(c: &mut Client, n: usize, timeout: Duration) -> Vec<(Value, Value)> {
    let mut got = Vec::new();
    wait_for("async THINK results", timeout, || {
        let r = c.ok(op::ASYNC_POLL, json!({"max": 100}));
        for item in r["results"].as_array().unwrap() {
            assert_eq!(item["opcode"], op::THINK);
            assert_eq!(item["opcode_name"], "THINK");
            let payload: Value = serde_json::from_str(item["payload"].as_str().unwrap()).unwrap();
            got.push((item["request_id"].clone(), payload));
        }
        (got.len() >= n).then_some(())
    });
    got
}

#[test]
fn openai_wire_format_prompt_system_image_tools() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    let d = openai_daemon(&fake, "");
    let mut c = d.client();
    let r = c.ok(
        op::THINK,
        json!({
            "prompt": "What is in this picture?",
            "system_instruction": "You are terse.",
            "image": {"data": "iVBORw0KGgo=", "mime_type": "image/png"},
            "temperature": 0.25,
            "max_tokens": 64,
            "thinking_level": "low",
            "tools": [{"name": "get_weather", "description": "Weather for a city",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "async": false,
        }),
    );
    assert_eq!(r["content"], "echo: What is in this picture?");
    assert_eq!(r["tokens"], TOTAL_TOKENS);
    assert_eq!(r["model"], "llama-test");
    assert!(r.get("function_calls").is_none(), "{r}");

    let reqs = fake.server.requests();
    assert_eq!(reqs.len(), 1);
    let q = &reqs[0];
    assert_eq!(q.method, "POST");
    assert_eq!(q.path, "/v1/chat/completions");
    assert_eq!(
        q.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(q.header("content-type"), Some("application/json"));
    let b = q.json();
    assert_eq!(b["model"], "llama-test");
    assert_eq!(
        b["messages"][0],
        json!({"role": "system", "content": "You are terse."})
    );
    assert_eq!(b["messages"][1]["role"], "user");
    assert_eq!(
        b["messages"][1]["content"],
        json!([
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ])
    );
    assert_eq!(b["temperature"], 0.25);
    assert_eq!(b["max_tokens"], 64);
    assert_eq!(b["reasoning_effort"], "low");
    assert_eq!(b["tools"][0]["type"], "function");
    assert_eq!(b["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(
        b["tools"][0]["function"]["parameters"]["properties"]["city"]["type"],
        "string"
    );

    // The model asks for a tool: the reply carries the call with parsed arguments.
    let r = c.ok(
        op::THINK,
        json!({"prompt": "please use a tool", "tools": [{"type": "function",
               "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}),
    );
    assert_eq!(
        r["function_calls"],
        json!([{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}])
    );
    // A plain prompt is sent as a plain string, and no image part appears.
    let r = c.ok(op::THINK, json!({"prompt": "hi"}));
    assert_eq!(r["content"], "echo: hi");
    let last = fake.server.requests().pop().unwrap().json();
    assert_eq!(last["messages"], json!([{"role": "user", "content": "hi"}]));
    assert!(last.get("tools").is_none() && last.get("temperature").is_none());
}

#[test]
fn gemini_from_environment_wire_format() {
    let fake = FakeLlm::start(Api::Gemini, Some("g-key-123"));
    let base = fake.base_url(Api::Gemini);
    let d = Daemon::with_config_env(
        "",
        &[("GEMINI_API_KEY", "g-key-123"), ("GEMINI_BASE_URL", &base)],
    );
    let mut c = d.client();
    let r = c.ok(
        op::THINK,
        json!({
            "prompt": "Describe",
            "system_instruction": "Be kind.",
            "image": "data:image/jpeg;base64,/9j/4AAQ",
            "temperature": 0.5,
            "max_tokens": 32,
            "thinking_level": "high",
            "tools": [{"functionDeclarations": [{"name": "lookup", "description": "d",
                        "parameters": {"type": "object"}}]}],
        }),
    );
    assert_eq!(r["content"], "echo: Describe");
    assert_eq!(r["tokens"], TOTAL_TOKENS);
    assert_eq!(r["model"], "gemini-2.5-flash");
    let q = &fake.server.requests()[0];
    assert_eq!(q.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(q.header("x-goog-api-key"), Some("g-key-123"));
    assert!(!q.path.contains("key="), "the key never goes in the URL");
    let b = q.json();
    assert_eq!(
        b["contents"],
        json!([{"role": "user", "parts": [
            {"text": "Describe"},
            {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
        ]}])
    );
    assert_eq!(
        b["systemInstruction"],
        json!({"parts": [{"text": "Be kind."}]})
    );
    assert_eq!(b["generationConfig"]["temperature"], 0.5);
    assert_eq!(b["generationConfig"]["maxOutputTokens"], 32);
    // Gemini 2.5 takes a budget, not a level name (it refuses `thinkingLevel` with a 400).
    assert_eq!(
        b["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 24576})
    );
    assert_eq!(b["tools"][0]["functionDeclarations"][0]["name"], "lookup");

    let r = c.ok(
        op::THINK,
        json!({"prompt": "use a tool", "tools": [{"name": "lookup"}]}),
    );
    assert_eq!(
        r["function_calls"],
        json!([{"name": "lookup", "arguments": {"city": "Paris"}}])
    );
    // `model` must name a configured model.
    let e = c.err(op::THINK, json!({"prompt": "x", "model": "gpt-9"}));
    assert!(
        e.contains("unknown model \"gpt-9\"") && e.contains("gemini"),
        "{e}"
    );
    assert_eq!(fake.server.requests().len(), 2);
}

#[test]
fn no_backend_says_how_to_configure_one() {
    let d = Daemon::start();
    let mut c = d.client();
    let e = c.err(op::THINK, json!({"prompt": "hello"}));
    assert!(
        e.contains("no LLM backend is configured") && e.contains("OPENAI_API_KEY"),
        "{e}"
    );
    let e = c.err(op::THINK, json!({"temperature": 1}));
    assert!(e.contains("prompt"), "{e}");
}

#[test]
fn openai_environment_key_is_used_but_never_logged_or_inherited() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    let base = fake.base_url(Api::OpenAi);
    let d = Daemon::with_config_env(
        "",
        &[
            ("OPENAI_API_KEY", KEY),
            ("OPENAI_BASE_URL", &base),
            ("OPENAI_MODEL", "qwen-local"),
        ],
    );
    let mut c = d.client();
    let r = c.ok(op::THINK, json!({"prompt": "ping", "model": "qwen-local"}));
    assert_eq!(r["content"], "echo: ping");
    assert_eq!(fake.server.requests()[0].json()["model"], "qwen-local");
    let env = c.ok(op::EXEC, json!({"command": "env"}));
    let out = env["stdout"].as_str().unwrap();
    assert!(
        out.contains("OPENAI_BASE_URL"),
        "EXEC sees ordinary variables"
    );
    assert!(!out.contains(KEY), "EXEC children must not see API keys");

    // The CLI prints the answer.
    let cli = std::process::Command::new(BIN)
        .args(["think", "--socket"])
        .arg(&d.socket)
        .arg("What is 2+2?")
        .output()
        .unwrap();
    assert!(cli.status.success(), "{cli:?}");
    assert_eq!(String::from_utf8_lossy(&cli.stdout), "echo: What is 2+2?\n");
    let cli = std::process::Command::new(BIN)
        .args(["think", "--socket"])
        .arg(&d.socket)
        .args(["--model", "nope", "x"])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cli.stderr).contains("unknown model"));

    let logs = d.logs();
    assert!(logs.contains("think: caller="), "debug logs are on: {logs}");
    assert!(!logs.contains(KEY), "the key must never be logged");
    let check = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&d.config_path)
        .env("OPENAI_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(check.status.success());
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        shown.contains("redacted") && !shown.contains(KEY),
        "{shown}"
    );
}

#[test]
fn wrong_key_is_a_clear_error_without_retries() {
    let fake = FakeLlm::start(Api::OpenAi, Some("the-right-key"));
    let d = openai_daemon(&fake, "backoff_initial_ms = 10");
    let mut c = d.client();
    let e = c.err(op::THINK, json!({"prompt": "hi"}));
    assert!(e.contains("401") && e.contains("Incorrect API key"), "{e}");
    assert!(!e.contains(KEY), "{e}");
    assert_eq!(fake.server.requests().len(), 1, "a 401 is not retried");

    // A backend that echoes the key back in its errors (and makes us retry) still cannot get
    // it into a reply or a log line.
    let echo = FakeLlm::start(Api::OpenAi, Some(KEY));
    for _ in 0..2 {
        echo.push(Reply::json(
            503,
            &json!({"error": {"message": format!("overloaded, key {KEY}")}}),
        ));
    }
    let d = openai_daemon(&echo, "max_retries = 1\nbackoff_initial_ms = 10");
    let mut c = d.client();
    let e = c.err(op::THINK, json!({"prompt": "hi"}));
    assert!(e.contains("overloaded, key <redacted>"), "{e}");
    let logs = d.logs();
    assert!(logs.contains("retrying"), "{logs}");
    assert!(!logs.contains(KEY), "{logs}");
}

#[test]
fn usage_is_charged_and_quota_refuses_further_calls() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    let d = openai_daemon(&fake, "");
    let mut c = d.client();
    // Lower our own quota (lowering is always allowed): 40 tokens = three calls of 15.
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"llm": {"max_tokens": 40}}}),
    );
    for i in 0..3 {
        c.ok(op::THINK, json!({"prompt": format!("q{i}")}));
    }
    let p = c.ok(op::GET_PERMS, json!({}));
    assert_eq!(p["permissions"]["llm"]["tokens_used"], 3 * TOTAL_TOKENS);
    assert_eq!(p["permissions"]["llm"]["calls_made"], 3);
    let e = c.err(op::THINK, json!({"prompt": "one more"}));
    assert!(
        e.contains("LLM quota exceeded") && e.contains("45 of 40 tokens"),
        "{e}"
    );
    assert_eq!(
        fake.server.requests().len(),
        3,
        "a refused call never reaches the model"
    );

    // Calls quota, and LLM_REPORT usage counts against it too.
    let mut c2 = d.client();
    c2.ok(
        op::SET_PERMS,
        json!({"permissions": {"llm": {"max_calls": 2}}}),
    );
    c2.ok(op::THINK, json!({"prompt": "a"}));
    let rep = c2.ok(op::LLM_REPORT, json!({"tokens": 7}));
    assert_eq!(rep["quota_exceeded"], false);
    let e = c2.err(op::THINK, json!({"prompt": "b"}));
    assert!(e.contains("2 of 2 calls"), "{e}");
    assert_eq!(fake.server.requests().len(), 4);
}

#[test]
fn can_think_false_is_refused_and_reported() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    let d = openai_daemon(&fake, "");
    let mut watcher = d.client();
    watcher.ok(op::SUBSCRIBE, json!({"event_types": ["SYSCALL_BLOCKED"]}));
    let mut c = d.client();
    c.ok(op::SET_PERMS, json!({"level": "minimal"}));
    let e = c.err(op::THINK, json!({"prompt": "hi"}));
    assert!(e.contains("can_think"), "{e}");
    let ev = wait_for("SYSCALL_BLOCKED", Duration::from_secs(5), || {
        let r = watcher.ok(op::POLL_EVENTS, json!({}));
        r["events"].as_array().unwrap().first().cloned()
    });
    assert_eq!(ev["data"]["op"], "THINK");
    assert!(fake.server.requests().is_empty());
}

#[test]
fn async_think_is_fetched_with_async_poll() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    let d = openai_daemon(&fake, "");
    let mut c = d.client();
    let r = c.ok(
        op::THINK,
        json!({"prompt": "later", "async": true, "request_id": "mine-1"}),
    );
    assert_eq!(r["async"], true);
    assert_eq!(r["status"], "accepted");
    assert_eq!(r["request_id"], "mine-1");
    let r2 = c.ok(op::THINK, json!({"prompt": "later too", "async": true}));
    assert!(r2["request_id"].as_str().unwrap().starts_with("think-"));
    let mut got = collect_async(&mut c, 2, Duration::from_secs(10));
    got.sort_by_key(|(id, _)| id.to_string());
    let (id, payload) = got.iter().find(|(id, _)| id == "mine-1").unwrap();
    assert_eq!(id, "mine-1");
    assert_eq!(payload["success"], true);
    assert_eq!(payload["content"], "echo: later");
    assert_eq!(payload["tokens"], TOTAL_TOKENS);
}

#[test]
fn fair_round_robin_across_three_agents() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    let d = openai_daemon(&fake, "concurrency = 1");
    fake.gate.close();
    let mut clients: Vec<Client> = (0..3).map(|_| d.client()).collect();
    let names = ["a", "b", "c"];
    // Agent a queues ten; its first is taken at once and held at the fake's gate.
    for i in 0..10 {
        clients[0].ok(op::THINK, json!({"prompt": format!("a{i}"), "async": true}));
    }
    fake.server.wait_requests(1, Duration::from_secs(10));
    // Then b and c queue ten each, behind a's nine.
    for (c, name) in clients.iter_mut().zip(names).skip(1) {
        for i in 0..10 {
            c.ok(
                op::THINK,
                json!({"prompt": format!("{name}{i}"), "async": true}),
            );
        }
    }
    fake.gate.open();
    for c in clients.iter_mut() {
        let got = collect_async(c, 10, Duration::from_secs(20));
        assert!(got.iter().all(|(_, p)| p["success"] == true), "{got:?}");
    }
    let order = fake.prompts();
    assert_eq!(order.len(), 30);
    // Served one at a time, round-robin: a0 (already running), then a, b, c in turn.
    let mut expected = vec!["a0".to_string()];
    for i in 0..10 {
        if i < 9 {
            expected.push(format!("a{}", i + 1));
        }
        expected.push(format!("b{i}"));
        expected.push(format!("c{i}"));
    }
    assert_eq!(order, expected, "service order must interleave the agents");
}

#[test]
fn per_agent_queue_is_bounded() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    let d = openai_daemon(&fake, "concurrency = 1\nqueue_per_agent = 2");
    fake.gate.close();
    let mut c = d.client();
    c.ok(op::THINK, json!({"prompt": "running", "async": true}));
    fake.server.wait_requests(1, Duration::from_secs(10));
    c.ok(op::THINK, json!({"prompt": "waiting 1", "async": true}));
    c.ok(op::THINK, json!({"prompt": "waiting 2", "async": true}));
    let e = c.err(op::THINK, json!({"prompt": "one too many", "async": true}));
    assert!(
        e.contains("THINK queue full") && e.contains("queue_per_agent"),
        "{e}"
    );
    // Another agent still gets in.
    let mut other = d.client();
    other.ok(op::THINK, json!({"prompt": "other", "async": true}));
    fake.gate.open();
    assert_eq!(collect_async(&mut c, 3, Duration::from_secs(10)).len(), 3);
    collect_async(&mut other, 1, Duration::from_secs(10));
    assert_eq!(fake.server.requests().len(), 4);
}

#[test]
fn retry_after_429_is_honoured_then_succeeds() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    fake.push(
        Reply::json(429, &json!({"error": {"message": "Rate limit reached"}}))
            .header("Retry-After", "1"),
    );
    let d = openai_daemon(&fake, "backoff_initial_ms = 10\nbackoff_max_ms = 20");
    let mut c = d.client();
    let r = c.ok(op::THINK, json!({"prompt": "patience"}));
    assert_eq!(r["content"], "echo: patience");
    let reqs = fake.server.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "the retry must wait for Retry-After (1s), waited {gap:?}"
    );
    assert_eq!(prompt_of(&reqs[1]), "patience");
}

#[test]
fn retry_after_on_503_is_honoured_in_seconds_and_as_an_http_date() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    // The back-off alone would retry within 20ms; only Retry-After makes the retry wait.
    let d = openai_daemon(&fake, "backoff_initial_ms = 10\nbackoff_max_ms = 20");
    let mut c = d.client();
    fake.push(
        Reply::json(503, &json!({"error": {"message": "overloaded"}})).header("Retry-After", "1"),
    );
    let r = c.ok(op::THINK, json!({"prompt": "seconds"}));
    assert_eq!(r["content"], "echo: seconds");
    let reqs = fake.server.requests();
    assert_eq!(reqs.len(), 2, "one 503, then the retry");
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_secs(5),
        "the retry must wait for Retry-After: 1, waited {gap:?}"
    );

    // The HTTP-date form: three seconds from now (whole seconds, so at least two from when the
    // daemon reads it).
    let at = std::time::SystemTime::now() + Duration::from_secs(3);
    fake.push(
        Reply::json(503, &json!({"error": {"message": "maintenance"}}))
            .header("Retry-After", &http_date(at)),
    );
    let r = c.ok(op::THINK, json!({"prompt": "date"}));
    assert_eq!(r["content"], "echo: date");
    let reqs = fake.server.requests();
    assert_eq!(reqs.len(), 4);
    let gap = reqs[3].at.duration_since(reqs[2].at);
    assert!(
        gap >= Duration::from_millis(1900) && gap < Duration::from_secs(6),
        "the retry must wait until the Retry-After date, waited {gap:?}"
    );
    assert_eq!(prompt_of(&reqs[3]), "date");
}

#[test]
fn retries_stay_within_the_total_time_budget() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    let d = openai_daemon(
        &fake,
        "timeout_secs = 2\nmax_retries = 5\nbackoff_initial_ms = 10\nbackoff_max_ms = 20",
    );
    let mut c = d.client();
    // Retry-After: 30 cannot fit in a 2s budget: THINK says so at once instead of waiting.
    fake.push(
        Reply::json(429, &json!({"error": {"message": "Rate limit reached"}}))
            .header("Retry-After", "30"),
    );
    let t = Instant::now();
    let e = c.err(op::THINK, json!({"prompt": "hurry"}));
    let took = t.elapsed();
    assert!(
        e.contains("429")
            && e.contains("Rate limit reached")
            && e.contains("gave up after 1 attempt:")
            && e.contains("waiting 30.0s to retry would pass the 2s time limit, llm.timeout_secs"),
        "{e}"
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(fake.server.requests().len(), 1, "no retry was sent");

    // The budget covers all attempts together: with Retry-After: 1 on every answer, the first
    // retry fits (at ~1s) and the second would end past 2s, so there are two attempts although
    // five retries are allowed.
    for _ in 0..6 {
        fake.push(
            Reply::json(429, &json!({"error": {"message": "Rate limit reached"}}))
                .header("Retry-After", "1"),
        );
    }
    let t = Instant::now();
    let e = c.err(op::THINK, json!({"prompt": "again"}));
    let took = t.elapsed();
    assert!(
        e.contains("gave up after 2 attempts:")
            && e.contains("waiting 1.0s to retry would pass the 2s time limit"),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1900),
        "took {took:?}"
    );
    assert_eq!(fake.prompts(), ["hurry", "again", "again"]);
}

#[test]
fn server_errors_are_retried_with_backoff_then_reported() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    for _ in 0..3 {
        fake.push(Reply::json(
            503,
            &json!({"error": {"message": "overloaded"}}),
        ));
    }
    let d = openai_daemon(
        &fake,
        "max_retries = 2\nbackoff_initial_ms = 100\nbackoff_max_ms = 400",
    );
    let mut c = d.client();
    let e = c.err(op::THINK, json!({"prompt": "x"}));
    assert!(
        e.contains("503") && e.contains("overloaded") && e.contains("gave up after 3 attempts"),
        "{e}"
    );
    let reqs = fake.server.requests();
    assert_eq!(reqs.len(), 3);
    // Exponential: ≥ 50ms (half of 100) then ≥ 100ms (half of 200).
    assert!(reqs[1].at.duration_since(reqs[0].at) >= Duration::from_millis(50));
    assert!(reqs[2].at.duration_since(reqs[1].at) >= Duration::from_millis(100));
    // After an error the backend is used normally again.
    assert_eq!(
        c.ok(op::THINK, json!({"prompt": "y"}))["content"],
        "echo: y"
    );
}

#[test]
fn slow_backend_times_out_while_other_clients_stay_fast() {
    let fake = FakeLlm::start(Api::OpenAi, Some(KEY));
    for _ in 0..4 {
        fake.push(Reply::hang());
    }
    let d = openai_daemon(&fake, "timeout_secs = 1.5\nconcurrency = 2");
    let socket = d.socket.clone();
    let started = Instant::now();
    let thinkers: Vec<_> = (0..2)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket);
                c.err(op::THINK, json!({"prompt": "never answered"}))
            })
        })
        .collect();
    fake.server.wait_requests(2, Duration::from_secs(10));
    // Both backend threads are stuck; the daemon still answers everyone else at once.
    let mut c = d.client();
    let mut worst = Duration::ZERO;
    for i in 0..50 {
        let t = Instant::now();
        let echo = c.call_raw(op::NOOP, format!("n{i}").as_bytes());
        worst = worst.max(t.elapsed());
        assert_eq!(echo.payload, format!("n{i}").as_bytes());
    }
    c.ok(op::STORE, json!({"key": "k", "value": 1}));
    assert!(
        worst < Duration::from_millis(250),
        "NOOP took {worst:?} while THINK was stuck"
    );
    for t in thinkers {
        let e = t.join().unwrap();
        assert!(
            e.contains("did not answer within the 1.5s time limit"),
            "{e}"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[test]
fn dead_backend_is_a_clear_error() {
    let base = format!("http://127.0.0.1:{}/v1", dead_port());
    let d = Daemon::with_config_env(
        &openai_config(&base, "max_retries = 1\nbackoff_initial_ms = 10"),
        &[("CLOVE_TEST_API_KEY", KEY)],
    );
    let mut c = d.client();
    let e = c.err(op::THINK, json!({"prompt": "anyone?"}));
    assert!(
        e.contains("cannot reach the backend") && e.contains("gave up after 2 attempts"),
        "{e}"
    );
    assert_eq!(c.call_raw(op::NOOP, b"ok").payload, b"ok");
}

#[test]
fn config_errors_name_the_problem() {
    let mut d = Daemon::start();
    let bad = d.path("bad.toml");
    std::fs::write(
        &bad,
        "[llm]\ndefault = \"x\"\n[llm.models.a]\nprovider = \"claude\"\napi_key_env = \"PLAIN\"\n",
    )
    .unwrap();
    let (ok, err) = crate::harness::check_config_file(&bad);
    assert!(!ok);
    assert!(
        err.contains("llm.models.a.provider") && err.contains("llm.models.a.api_key_env"),
        "{err}"
    );
    d.stop();
}

#[test]
fn api_key_file_is_read_and_must_be_private() {
    let fake = FakeLlm::start(Api::OpenAi, Some("file-key-42"));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "file-key-42\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = format!(
        "[llm.models.m]\nbase_url = \"{}\"\napi_key_file = \"{}\"\n",
        fake.base_url(Api::OpenAi),
        key_file.display()
    );
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(&cfg_path, &config).unwrap();
    let (ok, err) = crate::harness::check_config_file(&cfg_path);
    assert!(!ok);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::with_config(&config);
    let mut c = d.client();
    let r = c.ok(op::THINK, json!({"prompt": "k"}));
    assert_eq!(r["model"], "m");
    assert_eq!(
        fake.server.requests()[0].header("authorization"),
        Some("Bearer file-key-42")
    );
}

#[test]
fn named_models_each_reach_their_own_backend_with_their_own_concurrency() {
    let a = FakeLlm::start(Api::OpenAi, Some(KEY));
    let b = FakeLlm::start(Api::Gemini, Some("g-key-b"));
    let config = format!(
        "[llm]\ndefault = \"a\"\n\
         [llm.models.a]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"llama-a\"\n\
         api_key_env = \"CLOVE_TEST_API_KEY\"\nconcurrency = 1\n\
         [llm.models.b]\nprovider = \"gemini\"\nbase_url = \"{}\"\nmodel = \"gemini-2.5-flash\"\n\
         api_key_env = \"CLOVE_TEST_B_API_KEY\"\n",
        a.base_url(Api::OpenAi),
        b.base_url(Api::Gemini)
    );
    let d = Daemon::with_config_env(
        &config,
        &[
            ("CLOVE_TEST_API_KEY", KEY),
            ("CLOVE_TEST_B_API_KEY", "g-key-b"),
        ],
    );
    let mut c = d.client();

    // No model: the default, A, and only A.
    let r = c.ok(op::THINK, json!({"prompt": "to the default"}));
    assert_eq!(r["content"], "echo: to the default");
    assert_eq!(r["backend"], "a");
    assert_eq!(r["model"], "llama-a");
    assert_eq!(a.prompts(), ["to the default"]);
    assert!(b.server.requests().is_empty(), "B must not see A's call");

    // `model: "b"`: B, and only B, in B's wire format with B's key.
    let r = c.ok(op::THINK, json!({"prompt": "to b", "model": "b"}));
    assert_eq!(r["content"], "echo: to b");
    assert_eq!(r["backend"], "b");
    assert_eq!(r["model"], "gemini-2.5-flash");
    let breqs = b.server.requests();
    assert_eq!(breqs.len(), 1);
    assert_eq!(
        breqs[0].path,
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(breqs[0].header("x-goog-api-key"), Some("g-key-b"));
    assert_eq!(a.server.requests().len(), 1, "A must not see B's call");
    // A backend model id selects its model too.
    let r = c.ok(op::THINK, json!({"prompt": "by id", "model": "llama-a"}));
    assert_eq!(r["backend"], "a");
    assert_eq!(a.prompts(), ["to the default", "by id"]);

    // An unknown model is refused before anything is sent anywhere.
    let e = c.err(op::THINK, json!({"prompt": "lost", "model": "c"}));
    assert!(
        e.contains("unknown model \"c\"") && e.contains("\"a\"") && e.contains("\"b\""),
        "{e}"
    );
    assert_eq!(a.server.requests().len(), 2);
    assert_eq!(b.server.requests().len(), 1);

    // Concurrency is per model: A (concurrency 1) is stuck at its gate with one more waiting,
    // and a THINK to B still completes at once.
    a.gate.close();
    c.ok(op::THINK, json!({"prompt": "a stuck", "async": true}));
    a.server.wait_requests(3, Duration::from_secs(10));
    c.ok(op::THINK, json!({"prompt": "a waiting", "async": true}));
    let mut other = d.client();
    let t = Instant::now();
    let r = other.ok(op::THINK, json!({"prompt": "b meanwhile", "model": "b"}));
    let took = t.elapsed();
    assert_eq!(r["content"], "echo: b meanwhile");
    assert!(
        took < Duration::from_secs(2),
        "B waited {took:?} behind A's stuck call"
    );
    assert_eq!(
        a.server.requests().len(),
        3,
        "A runs one call at a time: the second waits in A's queue"
    );
    a.gate.open();
    let got = collect_async(&mut c, 2, Duration::from_secs(10));
    assert!(
        got.iter()
            .all(|(_, p)| p["success"] == true && p["backend"] == "a"),
        "{got:?}"
    );
    assert_eq!(
        a.prompts(),
        ["to the default", "by id", "a stuck", "a waiting"]
    );
    assert_eq!(b.server.requests().len(), 2);
}

#[test]
fn thinking_level_fits_each_model() {
    let oa = FakeLlm::start(Api::OpenAi, Some(KEY));
    let gm = FakeLlm::start(Api::Gemini, Some("g-key"));
    let gemini = |name: &str, id: &str| {
        format!(
            "[llm.models.{name}]\nprovider = \"gemini\"\nbase_url = \"{}\"\nmodel = \"{id}\"\n\
             api_key_env = \"CLOVE_TEST_G_API_KEY\"\n",
            gm.base_url(Api::Gemini)
        )
    };
    let openai = |name: &str, id: &str| {
        format!(
            "[llm.models.{name}]\nbase_url = \"{}\"\nmodel = \"{id}\"\n\
             api_key_env = \"CLOVE_TEST_API_KEY\"\n",
            oa.base_url(Api::OpenAi)
        )
    };
    let config = format!(
        "[llm]\ndefault = \"g25\"\nbackoff_initial_ms = 10\nbackoff_max_ms = 20\n{}{}{}{}{}",
        gemini("g25", "gemini-2.5-flash"),
        gemini("g25pro", "gemini-2.5-pro"),
        gemini("g3", "gemini-3-pro-preview"),
        openai("mini", "gpt-4o-mini"),
        openai("o4", "o4-mini"),
    );
    let d = Daemon::with_config_env(
        &config,
        &[
            ("CLOVE_TEST_API_KEY", KEY),
            ("CLOVE_TEST_G_API_KEY", "g-key"),
        ],
    );
    let mut c = d.client();
    let sent = |fake: &FakeLlm| fake.server.requests().pop().unwrap().json();

    // Gemini 2.5: a level name becomes a budget (the fake, like the API, refuses a level).
    let r = c.ok(
        op::THINK,
        json!({"prompt": "p", "model": "g25", "thinking_level": "low"}),
    );
    assert_eq!(r["content"], "echo: p");
    assert_eq!(
        sent(&gm)["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 1024})
    );
    // Gemini 3: the level itself; a number stays a budget.
    c.ok(
        op::THINK,
        json!({"prompt": "p", "model": "g3", "thinking_level": "Low"}),
    );
    assert_eq!(
        sent(&gm)["generationConfig"]["thinkingConfig"],
        json!({"thinkingLevel": "low"})
    );
    c.ok(
        op::THINK,
        json!({"prompt": "p", "model": "g3", "thinking_level": 2048}),
    );
    assert_eq!(
        sent(&gm)["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 2048})
    );
    assert_eq!(gm.server.requests().len(), 3);

    // A level a 2.5 model has no budget for is refused before anything is sent.
    let e = c.err(
        op::THINK,
        json!({"prompt": "p", "model": "g25", "thinking_level": "turbo"}),
    );
    assert!(
        e.contains("\"turbo\"")
            && e.contains("gemini-2.5-flash")
            && e.contains("low, medium, high"),
        "{e}"
    );
    assert_eq!(gm.server.requests().len(), 3);

    // What the model itself refuses (2.5 Pro cannot stop thinking) comes back with the API's
    // message, at once: a 400 is not retried.
    let e = c.err(
        op::THINK,
        json!({"prompt": "p", "model": "g25pro", "thinking_level": "none"}),
    );
    assert!(
        e.contains("400")
            && e.contains("Budget 0 is invalid. This model only works in thinking mode.")
            && e.contains("leave thinking_level out"),
        "{e}"
    );
    assert_eq!(gm.server.requests().len(), 4, "a 400 is not retried");

    // OpenAI: `reasoning_effort` is sent as asked; a model that does not reason refuses it,
    // and the API's message says so, with no retry.
    let e = c.err(
        op::THINK,
        json!({"prompt": "p", "model": "mini", "thinking_level": "low"}),
    );
    assert!(
        e.contains("400")
            && e.contains(
                "Unsupported parameter: 'reasoning_effort' is not supported with this model."
            )
            && e.contains("sent to gpt-4o-mini as reasoning_effort")
            && e.contains("leave thinking_level out"),
        "{e}"
    );
    assert_eq!(oa.server.requests().len(), 1, "a 400 is not retried");
    assert_eq!(sent(&oa)["reasoning_effort"], "low");
    // Without thinking_level the same model answers; a reasoning model takes the effort.
    assert_eq!(
        c.ok(op::THINK, json!({"prompt": "plain", "model": "mini"}))["content"],
        "echo: plain"
    );
    assert!(sent(&oa).get("reasoning_effort").is_none());
    c.ok(
        op::THINK,
        json!({"prompt": "p", "model": "o4", "thinking_level": "high"}),
    );
    assert_eq!(sent(&oa)["reasoning_effort"], "high");
    // A 400 about something else gets no thinking hint.
    oa.push(Reply::json(
        400,
        &json!({"error": {"message": "Invalid image data"}}),
    ));
    let e = c.err(
        op::THINK,
        json!({"prompt": "p", "model": "o4", "thinking_level": "high"}),
    );
    assert!(
        e.contains("Invalid image data") && !e.contains("thinking_level"),
        "{e}"
    );
}
