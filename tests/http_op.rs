//! The HTTP op against a fake web server on loopback: real status codes, headers, bodies
//! (text, binary, capped), allow-list and method checks, redirects re-checked on every hop,
//! async results and `clove call http`.

use crate::fakes::{FakeServer, Recorded, Reply, dead_port};
use crate::harness::{BIN, Daemon, op, wait_for};
use base64::Engine;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A small web site: `/hello`, `/status/N`, `/headers`, `/big`, `/binary`, `/echo`,
/// `/redirect?to=URL&code=N`, `/slow`.
fn website() -> FakeServer {
    FakeServer::start(|req: &Recorded| {
        let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(str::to_string)
        };
        match path {
            "/hello" => Reply::new(200, "hello world").header("Content-Type", "text/plain"),
            p if p.starts_with("/status/") => {
                let code: u16 = p["/status/".len()..].parse().unwrap();
                Reply::new(code, format!("status {code}"))
            }
            "/headers" => Reply::new(200, req.header("x-test").unwrap_or("missing").to_string())
                .header("X-Fake", "yes")
                .header("Set-Cookie", "a=1")
                .header("Set-Cookie", "b=2"),
            "/big" => Reply::new(200, "a".repeat(100_000)),
            "/binary" => Reply::new(200, vec![0xff, 0x00, 0x80, 0x7f, 0xfe]),
            "/echo" => Reply::json(
                200,
                &json!({
                    "method": req.method,
                    "body": String::from_utf8_lossy(&req.body),
                    "content_type": req.header("content-type"),
                    "authorization": req.header("authorization"),
                }),
            ),
            "/redirect" => {
                let code: u16 = param("code").map_or(302, |c| c.parse().unwrap());
                Reply::new(code, "").header("Location", &param("to").unwrap())
            }
            "/slow" => Reply::hang(),
            "/loop" => Reply::new(302, "").header("Location", "/loop"),
            _ => Reply::new(404, "not here"),
        }
    })
}

#[test]
fn real_status_codes_headers_and_bodies() {
    let web = website();
    let d = Daemon::start();
    let mut c = d.client();
    let r = c.ok(op::HTTP, json!({"url": web.url("/hello")}));
    assert_eq!(r["status_code"], 200);
    assert_eq!(r["body"], "hello world");
    assert_eq!(r["headers"]["content-type"], "text/plain");
    assert!(
        r.get("encoding").is_none() && r.get("truncated").is_none(),
        "{r}"
    );

    let r = c.call(op::HTTP, json!({"url": web.url("/status/404")}));
    assert_eq!(r["success"], false);
    assert_eq!(r["status_code"], 404, "404 is 404");
    assert_eq!(r["body"], "status 404");
    assert_eq!(r["error"], "HTTP 404 Not Found");
    let r = c.call(op::HTTP, json!({"url": web.url("/status/503")}));
    assert_eq!(r["status_code"], 503);
    let r = c.ok(op::HTTP, json!({"url": web.url("/status/204")}));
    assert_eq!(r["status_code"], 204);

    let r = c.ok(
        op::HTTP,
        json!({"url": web.url("/headers"), "headers": {"X-Test": "sent by agent"}}),
    );
    assert_eq!(r["body"], "sent by agent");
    assert_eq!(r["headers"]["x-fake"], "yes");
    assert_eq!(r["headers"]["set-cookie"], "a=1, b=2");

    let r = c.ok(op::HTTP, json!({"url": web.url("/binary")}));
    assert_eq!(r["encoding"], "base64");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(r["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, [0xff, 0x00, 0x80, 0x7f, 0xfe]);

    let r = c.ok(
        op::HTTP,
        json!({"url": web.url("/echo"), "method": "POST", "body": "{\"x\": 1}",
               "headers": {"Content-Type": "application/json", "Authorization": "Bearer t"}}),
    );
    let echoed: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["body"], "{\"x\": 1}");
    assert_eq!(echoed["content_type"], "application/json");
    let r = c.ok(
        op::HTTP,
        json!({"url": web.url("/echo"), "method": "put", "body": {"k": [1, 2]}}),
    );
    let echoed: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "PUT");
    assert_eq!(echoed["body"], "{\"k\":[1,2]}");
    assert_eq!(echoed["content_type"], "application/json");

    let r = c.ok(
        op::HTTP,
        json!({"url": web.url("/hello"), "method": "HEAD"}),
    );
    assert_eq!(r["body"], "");
    let reqs = web.requests();
    assert_eq!(reqs.last().unwrap().method, "HEAD");
    assert!(
        reqs.iter()
            .all(|r| r.header("user-agent").unwrap().starts_with("clove/"))
    );
}

#[test]
fn response_body_is_capped() {
    let web = website();
    let d = Daemon::with_config("[http]\nmax_response_bytes = 1000\n");
    let mut c = d.client();
    let r = c.ok(op::HTTP, json!({"url": web.url("/big")}));
    assert_eq!(r["truncated"], true);
    assert_eq!(r["body"].as_str().unwrap(), "a".repeat(1000));
    let r = c.ok(op::HTTP, json!({"url": web.url("/hello")}));
    assert!(r.get("truncated").is_none());
}

#[test]
fn request_headers_are_bounded_by_http_max_headers() {
    let web = website();
    let d = Daemon::with_config("[http]\nmax_headers = 3\n");
    let mut c = d.client();
    let headers = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("x-h{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let r = c.ok(
        op::HTTP,
        json!({"url": web.url("/hello"), "headers": headers(3)}),
    );
    assert_eq!(r["status_code"], 200);
    let e = c.err(
        op::HTTP,
        json!({"url": web.url("/hello"), "headers": headers(4)}),
    );
    assert!(
        e.contains("at most 3 headers") && e.contains("http.max_headers"),
        "{e}"
    );
    // The refused request never reached the server.
    assert_eq!(web.requests().len(), 1);
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"[http]\nmax_headers = 0\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("http.max_headers: 0"),
        "{out:?}"
    );
}

#[test]
fn allow_list_and_methods_are_enforced() {
    let web = website();
    let d = Daemon::start();
    let mut watcher = d.client();
    watcher.ok(op::SUBSCRIBE, json!({"event_types": ["SYSCALL_BLOCKED"]}));
    let mut c = d.client();
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"network": ["*.example.org", "localhost"],
                               "http_methods": ["GET"]}}),
    );
    let e = c.err(op::HTTP, json!({"url": web.url("/hello")}));
    assert!(
        e.contains("permission denied") && e.contains("127.0.0.1"),
        "{e}"
    );
    let ev = wait_for("SYSCALL_BLOCKED", Duration::from_secs(5), || {
        let r = watcher.ok(op::POLL_EVENTS, json!({}));
        r["events"].as_array().unwrap().first().cloned()
    });
    assert_eq!(ev["data"]["op"], "HTTP");
    // A look-alike name in the user-info part does not fool the parser.
    let e = c.err(
        op::HTTP,
        json!({"url": format!("http://localhost@127.0.0.1:{}/hello", web.port())}),
    );
    assert!(e.contains("credentials"), "{e}");
    let e = c.err(op::HTTP, json!({"url": "http://example.org/"}));
    assert!(
        e.contains("not in the allow-list"),
        "*.suffix matches subdomains only: {e}"
    );
    let e = c.err(op::HTTP, json!({"url": "file:///etc/passwd"}));
    assert!(e.contains("scheme"), "{e}");
    assert!(web.requests().is_empty(), "nothing was sent");

    // localhost is allowed, with GET only.
    let local = format!("http://localhost:{}/hello", web.port());
    let r = c.ok(op::HTTP, json!({"url": local}));
    assert_eq!(r["body"], "hello world");
    let e = c.err(
        op::HTTP,
        json!({"url": local, "method": "POST", "body": "x"}),
    );
    assert!(e.contains("method POST"), "{e}");
    assert_eq!(web.requests().len(), 1);

    let mut none = d.client();
    none.ok(op::SET_PERMS, json!({"level": "sandboxed"}));
    let e = none.err(op::HTTP, json!({"url": local}));
    assert!(e.contains("can_http"), "{e}");
}

#[test]
fn redirects_are_followed_and_rechecked_on_every_hop() {
    let web = website();
    let d = Daemon::start();
    let mut c = d.client();
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"network": ["127.0.0.1"]}}),
    );
    // Allowed hop: followed.
    let to = web.url("/hello");
    let r = c.ok(
        op::HTTP,
        json!({"url": web.url(&format!("/redirect?to={to}"))}),
    );
    assert_eq!(r["body"], "hello world");
    assert_eq!(r["redirects"], 1);
    assert_eq!(r["url"], to);
    // Relative Location.
    let r = c.ok(
        op::HTTP,
        json!({"url": web.url("/redirect?to=/status/201")}),
    );
    assert_eq!(r["status_code"], 201);
    let before = web.requests().len();

    // A hop to a host outside the allow-list is refused, and nothing is sent there.
    let evil = format!("http://localhost:{}/hello", web.port());
    let e = c.err(
        op::HTTP,
        json!({"url": web.url(&format!("/redirect?to={evil}"))}),
    );
    assert!(
        e.contains("redirect") && e.contains("refused") && e.contains("\"localhost\""),
        "{e}"
    );
    assert_eq!(
        web.requests().len(),
        before + 1,
        "only the first hop was sent"
    );

    // Without following, the 3xx itself comes back.
    let r = c.ok(
        op::HTTP,
        json!({"url": web.url(&format!("/redirect?to={evil}")), "follow_redirects": false}),
    );
    assert_eq!(r["status_code"], 302);
    assert_eq!(r["headers"]["location"], evil);

    // 303 after POST becomes GET; the Authorization header stays on the same host only.
    let mut full = d.client();
    let r = full.ok(
        op::HTTP,
        json!({"url": web.url(&format!("/redirect?code=303&to={}", web.url("/echo"))),
               "method": "POST", "body": "data", "headers": {"Authorization": "Bearer t"}}),
    );
    let echoed: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "GET");
    assert_eq!(echoed["body"], "");
    assert_eq!(echoed["authorization"], "Bearer t");
    let other_host = format!("http://localhost:{}/echo", web.port());
    let r = full.ok(
        op::HTTP,
        json!({"url": web.url(&format!("/redirect?code=307&to={other_host}")),
               "method": "POST", "body": "data", "headers": {"Authorization": "Bearer t"}}),
    );
    let echoed: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "POST", "307 keeps the method");
    assert_eq!(echoed["body"], "data");
    assert_eq!(
        echoed["authorization"],
        Value::Null,
        "credentials stay with their host"
    );

    // A redirect loop ends with a clear error.
    let d2 = Daemon::with_config("[http]\nmax_redirects = 3\n");
    let mut c2 = d2.client();
    let loop_url = web.url("/loop");
    let e = c2.err(op::HTTP, json!({"url": loop_url}));
    assert!(e.contains("too many redirects"), "{e}");
}

#[test]
fn timeouts_and_unreachable_hosts() {
    let web = website();
    let d = Daemon::start();
    let mut c = d.client();
    let t = Instant::now();
    let e = c.err(op::HTTP, json!({"url": web.url("/slow"), "timeout": 0.5}));
    assert!(e.contains("timed out after 0.5s"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let e = c.err(
        op::HTTP,
        json!({"url": format!("http://127.0.0.1:{}/", dead_port())}),
    );
    assert!(e.contains("cannot reach 127.0.0.1"), "{e}");
    let e = c.err(
        op::HTTP,
        json!({"url": web.url("/hello"), "timeout": 100000}),
    );
    assert!(e.contains("http.max_timeout_secs"), "{e}");
}

#[test]
fn async_http_and_the_cli() {
    let web = website();
    let d = Daemon::start();
    let mut c = d.client();
    let r = c.ok(
        op::HTTP,
        json!({"url": web.url("/status/404"), "async": true, "request_id": 7}),
    );
    assert_eq!(r["status"], "accepted");
    let result = wait_for("async HTTP result", Duration::from_secs(10), || {
        let r = c.ok(op::ASYNC_POLL, json!({}));
        r["results"].as_array().unwrap().first().cloned()
    });
    assert_eq!(result["request_id"], 7);
    assert_eq!(result["opcode_name"], "HTTP");
    let payload: Value = serde_json::from_str(result["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["status_code"], 404);

    let out = std::process::Command::new(BIN)
        .args(["call", "http", "--socket"])
        .arg(&d.socket)
        .arg(json!({"url": web.url("/hello")}).to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status_code"], 200);
    assert_eq!(v["body"], "hello world");
}

#[test]
fn slow_requests_do_not_block_other_ops() {
    let web = website();
    let d = Daemon::with_config("[http]\nthreads = 2\nqueue = 1\n");
    let socket = d.socket.clone();
    let url = web.url("/slow");
    // One at a time, so each is running before the next arrives (the queue holds one).
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let (socket, url) = (socket.clone(), url.clone());
            let t = std::thread::spawn(move || {
                let mut c = crate::harness::Client::connect(&socket);
                c.err(op::HTTP, json!({"url": url, "timeout": 2}))
            });
            web.wait_requests(i + 1, Duration::from_secs(10));
            t
        })
        .collect();
    let mut c = d.client();
    // Both HTTP threads are busy: one more waits in the queue (size 1), the next is refused.
    let r = c.ok(op::HTTP, json!({"url": web.url("/hello"), "async": true}));
    assert_eq!(r["status"], "accepted");
    let e = c.err(op::HTTP, json!({"url": web.url("/hello")}));
    assert!(e.contains("HTTP queue full"), "{e}");
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(c.call_raw(op::NOOP, b"x").payload, b"x");
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    for s in slow {
        assert!(s.join().unwrap().contains("timed out"));
    }
    let result = wait_for("queued request", Duration::from_secs(10), || {
        let r = c.ok(op::ASYNC_POLL, json!({}));
        r["results"].as_array().unwrap().first().cloned()
    });
    let payload: Value = serde_json::from_str(result["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["body"], "hello world");
}

#[test]
fn a_suffix_rule_lets_matching_names_through() {
    // No `*.suffix` name resolves to loopback here (glibc reads /etc/hosts, which has only
    // localhost and the machine's names; `getent hosts foo.localhost` finds nothing), so the
    // names reach a loopback fake through the daemon's proxy support: with HTTP_PROXY set,
    // clove sends `CONNECT host:port` to the proxy and the request through the tunnel, without
    // resolving the name itself. The allow-list is checked on the URL's host all the same.
    let proxy = FakeServer::start(|req: &Recorded| {
        if req.method == "CONNECT" {
            return Reply::new(200, "");
        }
        Reply::new(
            200,
            format!(
                "{} {} for {}",
                req.method,
                req.path,
                req.header("host").unwrap_or("?")
            ),
        )
    });
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port());
    let d = Daemon::with_config_env(
        "",
        &[
            ("HTTP_PROXY", &proxy_url),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ],
    );
    let mut c = d.client();
    c.ok(
        op::SET_PERMS,
        json!({"permissions": {"network": ["*.localtest"]}}),
    );
    let r = c.ok(op::HTTP, json!({"url": "http://api.lab.localtest/hello"}));
    assert_eq!(r["status_code"], 200);
    assert_eq!(r["body"], "GET /hello for api.lab.localtest");
    let r = c.ok(op::HTTP, json!({"url": "http://Docs.LocalTest:8080/x?y=1"}));
    // Names match whatever their case; the request goes out as written.
    assert_eq!(r["body"], "GET /x?y=1 for Docs.LocalTest:8080");
    let seen: Vec<(String, String)> = proxy
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("CONNECT".to_string(), "api.lab.localtest:80".to_string()),
            ("GET".to_string(), "/hello".to_string()),
            ("CONNECT".to_string(), "Docs.LocalTest:8080".to_string()),
            ("GET".to_string(), "/x?y=1".to_string()),
        ]
    );

    // Names that only look alike are refused before anything is sent: the suffix itself, a
    // name that merely ends in the same letters, and one with the suffix in the middle.
    for url in [
        "http://localtest/",
        "http://evillocaltest/",
        "http://api.localtest.evil.org/",
        "http://127.0.0.1/",
    ] {
        let e = c.err(op::HTTP, json!({"url": url}));
        assert!(e.contains("not in the allow-list"), "{url}: {e}");
    }
    assert_eq!(
        proxy.requests().len(),
        4,
        "refused requests never reach the proxy"
    );
}
