//! The Codeswarm router over TCP (issue 11), against the real daemon with the local provider:
//! every command's answers and refusals, events to every client, the node worker's modes,
//! the inter-swarm queue, approvals, slow and hostile clients, restarts and damaged streams.

use crate::fakes::{FakeServer, Reply};
use crate::harness::{BIN, op, wait_for};
use crate::router_support::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_ready_line_and_hello_report_the_router() {
    let (d, addr) = router_daemon("");
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let mut c = d.client();
    let hello = c.ok(op::HELLO, json!({}));
    let r = &hello["services"]["router"];
    for k in [
        "clients",
        "events_sent",
        "events_dropped",
        "queue_depth",
        "followed_files",
        "live_swarms",
    ] {
        assert!(r[k].is_u64(), "services.router.{k} missing: {r}");
    }
    assert_eq!(r["command_queue"]["key"], "router.command_queue");
    let m = c.ok(op::METRICS_SYSTEM, json!({}));
    assert_eq!(m["services"]["router"]["listen"], addr.as_str(), "{m}");
    let mut rc = Rc::connect(&addr);
    let v = rc.ask("providers_list", json!({}), "providers_list");
    let p = &v["data"]["providers"][0];
    assert_eq!(
        (
            p["id"].as_str(),
            p["backend"].as_str(),
            p["disabled"].as_bool()
        ),
        (Some("local"), Some("local"), Some(false))
    );
    assert!(
        p["launch_fields"].as_array().is_some_and(|f| !f.is_empty()),
        "{p}"
    );
    wait_for("the client to be counted", T, || {
        (router_stats(&d)["clients"] == 1).then_some(())
    });
}

/// Starts `clove serve` with `config` and `env`; returns its ready line, or its stderr when
/// it did not become ready (it is stopped either way).
fn start_once(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> Result<String, String> {
    let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let cfg = dir.join(format!("c{n}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.join(format!("s{n}.sock")))
        .arg("--state-dir")
        .arg(dir.join(format!("state{n}")))
        .env_remove("CODESWARM_ROUTER_HOST")
        .env_remove("CODESWARM_ROUTER_PORT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(T).unwrap_or_default();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    if line.starts_with("clove: ready") {
        Ok(line)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_router_can_be_off_and_an_explicit_address_in_use_stops_the_start() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    // listen = "": no router, and the ready line says so.
    let line = start_once(dir.path(), "[router]\nlisten = \"\"\n", &[]).unwrap();
    assert!(line.contains(" router=off "), "{line}");
    // An address the user chose (file or environment) that is taken: a start error naming it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = start_once(
        dir.path(),
        &format!("[router]\nlisten = \"127.0.0.1:{port}\"\n"),
        &[],
    )
    .unwrap_err();
    assert!(
        err.contains("router.listen") && err.contains(&port),
        "{err}"
    );
    let err = start_once(dir.path(), "", &[("CODESWARM_ROUTER_PORT", &port)]).unwrap_err();
    assert!(
        err.contains("router.listen") && err.contains(&port),
        "{err}"
    );
    // The environment is used when the file says nothing.
    drop(taken);
    let line = start_once(dir.path(), "", &[("CODESWARM_ROUTER_PORT", &port)]).unwrap();
    assert!(
        line.contains(&format!(" router=127.0.0.1:{port} ")),
        "{line}"
    );
    // The built-in default port held by another program: the daemon runs without a router.
    let holder = std::net::TcpListener::bind("127.0.0.1:8765");
    let line = start_once(dir.path(), "", &[]).unwrap();
    drop(holder);
    assert!(line.contains(" router=off "), "{line}");
    // A remote address needs the opt-in and a token.
    let (ok, err) = crate::harness::check_config("[router]\nlisten = \"0.0.0.0:8765\"\n");
    assert!(!ok && err.contains("router.allow_remote"), "{err}");
    let (ok, err) =
        crate::harness::check_config("[router]\nlisten = \"0.0.0.0:8765\"\nallow_remote = true\n");
    assert!(!ok && err.contains("router.token"), "{err}");
}

#[test]
fn every_command_answers_or_refuses() {
    let (d, addr) = router_daemon("");
    let mut c = Rc::connect(&addr);
    // Refusals that need no swarm.
    assert_eq!(
        c.refuse("swarm_launch", json!({"nodes": 0})),
        "nodes must be an integer >= 1"
    );
    assert_eq!(
        c.refuse("swarm_launch", json!({"nodes": 1, "provider": "nope"})),
        "unknown provider: nope"
    );
    assert!(
        c.refuse(
            "swarm_launch",
            json!({"nodes": 1, "provider_params": {"worker_mode": "warp"}})
        )
        .contains("worker_mode")
    );
    assert_eq!(
        c.refuse("swarm_status", json!({"swarm_id": "missing"})),
        "unknown swarm_id"
    );
    assert_eq!(
        c.refuse("inject", json!({"swarm_id": "missing", "content": "x"})),
        "unknown swarm_id"
    );
    assert_eq!(
        c.refuse("swarm_terminate", json!({"swarm_id": "missing"})),
        "unknown swarm_id"
    );
    assert_eq!(
        c.refuse(
            "approve_execution",
            json!({"job_id": "1", "call_id": "c", "approved": true})
        ),
        "unknown approval request"
    );
    assert_eq!(
        c.refuse(
            "enqueue_inject",
            json!({"source_swarm_id": "a", "target_swarm_id": "b", "content": "x"})
        ),
        "unknown source_swarm_id"
    );
    for p in [
        "project_create",
        "project_plan",
        "project_start",
        "project_resume",
        "project_resume_preview",
        "project_list",
    ] {
        assert_eq!(c.refuse(p, json!({})), format!("not supported yet: {p}"));
    }
    assert!(
        c.refuse("frobnicate", json!({}))
            .starts_with("unknown command")
    );
    // Answers.
    assert_eq!(
        c.ask("swarm_list", json!({}), "swarm_list")["data"]["swarms"],
        json!({})
    );
    assert_eq!(
        c.ask("queue_list", json!({}), "queue_list")["data"]["items"],
        json!([])
    );
    let a = c.ask("approvals_list", json!({}), "approvals_list");
    assert_eq!(a["data"]["approvals"], json!({}));
    assert!(a["data"]["approvals_version"].is_u64());
    // A swarm's life: launch (with progress), list, status, terminate twice, then refusals.
    let rid = c.command(
        "swarm_launch",
        json!({"nodes": 2, "partition": "debug", "time": "00:05:00",
        "system_prompt": "You are node"}),
    );
    let l = c.answer(&rid, "swarm_launched");
    let progress: Vec<String> = c
        .seen
        .iter()
        .filter(|v| {
            v["event"] == "swarm_launch_progress" && v["data"]["request_id"] == rid.as_str()
        })
        .map(|v| v["data"]["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(progress, ["queued", "starting", "ready"]);
    let (swarm, job) = (
        l["data"]["swarm_id"].as_str().unwrap().to_string(),
        l["data"]["job_id"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        (
            l["data"]["node_count"].as_u64(),
            l["data"]["partition"].as_str(),
            l["data"]["time"].as_str()
        ),
        (Some(2), Some("debug"), Some("00:05:00"))
    );
    assert_eq!(l["data"]["provider_id"], "local");
    assert_eq!(l["data"]["agent_runtime"], "clove-mock");
    // The system prompt went to every node with the launch's request id.
    for node in 0..2u64 {
        let ack = c.wait("system prompt ack", |v| {
            v["event"] == "inject_ack"
                && v["data"]["request_id"] == rid.as_str()
                && v["data"]["node_id"] == node
        });
        let inj = ack["data"]["injection_id"].as_str().unwrap().to_string();
        let a = c.wait("its answer", |v| {
            v["event"] == "assistant" && v["data"]["injection_id"] == inj.as_str()
        });
        assert_eq!(
            a["data"]["content"],
            "Mock worker received prompt: You are node"
        );
    }
    let list = c.ask("swarm_list", json!({}), "swarm_list");
    let s = &list["data"]["swarms"][&swarm];
    assert_eq!(
        (
            s["job_id"].as_str(),
            s["status"].as_str(),
            s["provider_backend"].as_str()
        ),
        (Some(job.as_str()), Some("running"), Some("local"))
    );
    assert_eq!(s["system_prompt"], "You are node");
    let st = c.ask("swarm_status", json!({"swarm_id": swarm}), "swarm_status");
    assert_eq!(
        (
            st["data"]["status"].as_str(),
            st["data"]["node_count"].as_u64()
        ),
        (Some("running"), Some(2))
    );
    let t1 = c.command("swarm_terminate", json!({"swarm_id": swarm}));
    let t2 = c.command("swarm_terminate", json!({"swarm_id": swarm}));
    assert_eq!(
        c.answer(&t1, "swarm_status")["data"]["status"],
        "terminating"
    );
    c.answer(&t1, "swarm_terminated");
    c.answer(&t2, "swarm_terminated");
    assert!(c.seen.iter().any(
        |v| v["event"] == "swarm_terminate_progress" && v["data"]["request_id"] == t1.as_str()
    ));
    let st = c.ask("swarm_status", json!({"swarm_id": swarm}), "swarm_status");
    assert_eq!(st["data"]["status"], "terminated");
    assert_eq!(
        c.refuse("inject", json!({"swarm_id": swarm, "content": "x"})),
        "the swarm is terminated"
    );
    c.ask(
        "swarm_terminate",
        json!({"swarm_id": swarm}),
        "swarm_terminated",
    );
    // Its workers are gone.
    for node in 0..2 {
        let pid = worker_pid(&d, &job, node);
        wait_for("the worker to exit", T, || (!pid_alive(pid)).then_some(()));
    }
}

#[test]
fn two_clients_both_receive_every_event() {
    let (_d, addr) = router_daemon("");
    let mut a = Rc::connect(&addr);
    let mut b = Rc::connect(&addr);
    // b says nothing; it must still hear a's commands' events.
    let (swarm, _) = launch(&mut a, 2, json!({}));
    let answers = inject_wait(&mut a, &swarm, json!("all"), "hello both");
    assert_eq!(answers.len(), 2);
    terminate(&mut a, &swarm);
    let until = a.seen.len();
    b.wait("the end", |v| v["event"] == "swarm_terminated");
    let names = |c: &Rc| -> Vec<String> {
        c.seen
            .iter()
            .map(|v| format!("{}:{}", v["event"], v["data"]))
            .collect()
    };
    assert_eq!(
        names(&b)[..until.min(b.seen.len())],
        names(&a)[..until.min(b.seen.len())]
    );
    assert_eq!(b.seen.len(), until, "b got exactly a's events");
}

#[test]
fn inject_to_all_one_node_a_list_and_out_of_range() {
    let (_d, addr) = router_daemon("");
    let mut c = Rc::connect(&addr);
    let (swarm, _) = launch(&mut c, 3, json!({}));
    let r = inject_wait(&mut c, &swarm, json!("all"), "to all");
    assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(
        r.iter()
            .all(|x| x.1 == "Mock worker received prompt: to all")
    );
    let r = inject_wait(&mut c, &swarm, json!(1), "to one");
    assert_eq!(r, [(1, "Mock worker received prompt: to one".to_string())]);
    let r = inject_wait(&mut c, &swarm, json!([2, 0]), "to a   list");
    assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 2]);
    assert!(
        r.iter()
            .all(|x| x.1 == "Mock worker received prompt: to a list")
    );
    let ack = c
        .seen
        .iter()
        .find(|v| v["event"] == "inject_ack" && v["data"]["prompt"] == "to one")
        .unwrap()
        .clone();
    for k in [
        "request_id",
        "swarm_id",
        "injection_id",
        "node_id",
        "prompt",
    ] {
        assert!(!ack["data"][k].is_null(), "inject_ack lacks {k}: {ack}");
    }
    assert_eq!(
        c.refuse(
            "inject",
            json!({"swarm_id": swarm, "nodes": 3, "content": "x"})
        ),
        "node 3 is out of range: the swarm has nodes 0 to 2"
    );
    assert!(
        c.refuse(
            "inject",
            json!({"swarm_id": swarm, "nodes": [0, 7], "content": "x"})
        )
        .contains("out of range")
    );
    assert!(
        c.refuse(
            "inject",
            json!({"swarm_id": swarm, "nodes": "some", "content": "x"})
        )
        .contains("nodes must be")
    );
    assert_eq!(
        c.refuse("inject", json!({"swarm_id": swarm, "content": "  "})),
        "content is required"
    );
    // No event for the refused ones reached a node.
    let acks = c.seen.iter().filter(|v| v["event"] == "inject_ack").count();
    assert_eq!(acks, 3 + 1 + 2);
    terminate(&mut c, &swarm);
}

/// Replaces ids that differ between two runs by their order of appearance.
fn normalise(text: &str, job: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    text.lines()
        .map(|l| {
            let mut l = l.replace(job, "JOB");
            if let Some(i) = l.find("\"injection_id\": \"") {
                let start = i + 17;
                let end = start + l[start..].find('"').unwrap();
                let id = l[start..end].to_string();
                let n = ids.iter().position(|x| *x == id).unwrap_or_else(|| {
                    ids.push(id.clone());
                    ids.len() - 1
                });
                l = l.replace(&id, &format!("INJ{n}"));
            }
            l
        })
        .collect()
}

#[test]
fn the_mock_worker_matches_codeswarms_record_for_record() {
    let (d, addr) = router_daemon("");
    let py = d.path("mock_worker.py");
    std::fs::write(&py, PY_MOCK).unwrap();
    let mut c = Rc::connect(&addr);
    let (ours, our_job) = launch(&mut c, 1, json!({"worker_mode": "mock"}));
    let (theirs, their_job) = launch(&mut c, 1, json!({"worker_program": ["python3", py]}));
    let prompts = [
        "hello",
        "  lots \t of\n\nwhite   space  ",
        "accents: héllo wörld ✓ 🚀",
        &"long ".repeat(60),
        "quote \" and backslash \\",
    ];
    for p in prompts {
        let a = inject_wait(&mut c, &ours, json!(0), p);
        let b = inject_wait(&mut c, &theirs, json!(0), p);
        assert_eq!(a[0].1, b[0].1, "reply text for {p:?}");
    }
    // Terminating reads each outbox to its end (both workers write `complete` on shutdown).
    terminate(&mut c, &ours);
    terminate(&mut c, &theirs);
    // The events clients saw, record for record.
    let stream = |c: &Rc, s: &str| -> Vec<String> {
        c.seen
            .iter()
            .filter(|v| v["data"]["swarm_id"] == s)
            .filter(|v| {
                !v["event"].as_str().unwrap().starts_with("swarm_")
                    && !v["event"].as_str().unwrap().starts_with("inject_")
            })
            .map(|v| {
                format!(
                    "{} {} {}",
                    v["event"], v["data"]["content"], v["data"]["status"]
                )
            })
            .collect()
    };
    assert_eq!(stream(&c, &ours).len(), 2 + 6 * prompts.len());
    assert_eq!(stream(&c, &ours), stream(&c, &theirs));
    // And the outbox files, byte for byte once the ids are aligned.
    let a = normalise(
        &std::fs::read_to_string(outbox(&d, &our_job, 0)).unwrap(),
        &our_job,
    );
    let b = normalise(
        &std::fs::read_to_string(outbox(&d, &their_job, 0)).unwrap(),
        &their_job,
    );
    assert_eq!(a.len(), 2 + 6 * prompts.len());
    assert_eq!(a, b);
}

#[test]
fn codeswarms_python_mock_worker_runs_through_worker_program() {
    let (d, addr) = router_daemon("");
    let py = d.path("mock_worker.py");
    std::fs::write(&py, PY_MOCK).unwrap();
    let mut c = Rc::connect(&addr);
    let (swarm, job) = launch(&mut c, 2, json!({"worker_program": ["python3", py]}));
    let list = c.ask("swarm_list", json!({}), "swarm_list");
    assert_eq!(
        list["data"]["swarms"][&swarm]["agent_runtime"],
        "program:python3"
    );
    c.wait("start records", |v| {
        v["event"] == "worker_start" && v["data"]["node_id"] == 1
    });
    let r = inject_wait(&mut c, &swarm, json!("all"), "from the upstream worker");
    assert_eq!(
        r[1].1,
        "Mock worker received prompt: from the upstream worker"
    );
    // thread_status went active then idle: the node is idle again. (The idle record comes
    // after turn_complete, in a write of its own: wait for it before asking.)
    for node in [0, 1] {
        c.wait("idle", |v| {
            v["event"] == "thread_status"
                && v["data"]["node_id"] == node
                && v["data"]["status"]["type"] == "idle"
        });
    }
    let st = c.ask("swarm_status", json!({"swarm_id": swarm}), "swarm_status");
    assert!(
        st["data"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["busy"] == false),
        "{st}"
    );
    terminate(&mut c, &swarm);
    // It stopped on the shutdown line (writing `complete`), not by a signal.
    assert_eq!(c.events_of(&swarm, "worker_complete").len(), 2);
    assert!(c.seen.iter().all(|v| v["data"]["stage"] != "signalled"));
    let text = std::fs::read_to_string(outbox(&d, &job, 0)).unwrap();
    assert!(
        text.ends_with(&format!(
            "{{\"type\": \"complete\", \"job_id\": \"{job}\", \"node_id\": 0}}\n"
        )),
        "{text}"
    );
}

#[test]
fn the_command_worker_streams_answers_and_reports_errors() {
    let (_d, addr) = router_daemon("");
    let mut c = Rc::connect(&addr);
    let script = "import sys\nprompt = sys.stdin.read()\nprint('got: ' + prompt.upper(), flush=True)\nprint('second line', flush=True)\n";
    let (swarm, _) = launch(
        &mut c,
        1,
        json!({"worker_mode": "command", "worker_command": ["python3", "-c", script]}),
    );
    assert_eq!(
        c.ask("swarm_list", json!({}), "swarm_list")["data"]["swarms"][&swarm]["agent_runtime"],
        "clove-command"
    );
    let r = inject_wait(&mut c, &swarm, json!(0), "make it loud");
    assert_eq!(r[0].1, "got: MAKE IT LOUD\nsecond line\n");
    let deltas = c.contents("assistant_delta");
    assert_eq!(deltas, ["got: MAKE IT LOUD\n", "second line\n"]);
    assert!(c.seen.iter().any(|v| v["event"] == "turn_started"));
    assert!(c.seen.iter().all(|v| v["event"] != "agent_error"));
    assert_eq!(
        c.seen.iter().filter(|v| v["event"] == "assistant").count(),
        1,
        "one answer per turn"
    );
    // Two prompts at once: one turn at a time, in order.
    let r1 = c.command("inject", json!({"swarm_id": swarm, "content": "first"}));
    let r2 = c.command("inject", json!({"swarm_id": swarm, "content": "second"}));
    let i1 = c.answer(&r1, "inject_ack")["data"]["injection_id"]
        .as_str()
        .unwrap()
        .to_string();
    let i2 = c.answer(&r2, "inject_ack")["data"]["injection_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait("second turn", |v| {
        v["event"] == "turn_complete" && v["data"]["injection_id"] == i2.as_str()
    });
    let pos = |name: &str, inj: &str| {
        c.seen
            .iter()
            .position(|v| v["event"] == name && v["data"]["injection_id"] == inj)
            .unwrap()
    };
    assert!(
        pos("turn_complete", &i1) < pos("turn_started", &i2),
        "turns overlap"
    );
    terminate(&mut c, &swarm);
    // A failing command: partial output, then agent_error with the exit code and stderr.
    let (swarm, _) = launch(
        &mut c,
        1,
        json!({"worker_mode": "command",
        "worker_command": ["sh", "-c", "echo partial; echo it broke >&2; exit 3"]}),
    );
    let r = inject_wait(&mut c, &swarm, json!(0), "x");
    assert_eq!(r[0].1, "partial\n");
    let e = c.wait("agent_error", |v| {
        v["event"] == "agent_error" && v["data"]["swarm_id"] == swarm.as_str()
    });
    let msg = e["data"]["message"].as_str().unwrap();
    assert!(msg.contains("code 3") && msg.contains("it broke"), "{msg}");
    // A program that does not exist.
    terminate(&mut c, &swarm);
    let (swarm, _) = launch(
        &mut c,
        1,
        json!({"worker_mode": "command", "worker_command": ["/no/such/program"]}),
    );
    inject_wait(&mut c, &swarm, json!(0), "x");
    let e = c.wait("agent_error", |v| {
        v["event"] == "agent_error" && v["data"]["swarm_id"] == swarm.as_str()
    });
    assert!(
        e["data"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot run /no/such/program"),
        "{e}"
    );
    terminate(&mut c, &swarm);
    // worker_command must be an argv, never a shell string.
    assert!(c.refuse("swarm_launch", json!({"nodes": 1, "provider_params": {"worker_mode": "command", "worker_command": "echo hi"}})).contains("list of arguments"));
}

fn sse(chunks: &[&str], usage: Value) -> Vec<u8> {
    let mut body = String::new();
    for ch in chunks {
        body.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": ch}}]})
        ));
    }
    body.push_str(&format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"choices": [], "usage": usage})
    ));
    body.into_bytes()
}

#[test]
fn the_llm_worker_streams_from_an_openai_compatible_server() {
    let fake = FakeServer::start(|req| {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(json!({}));
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .map(|m| m["content"].clone())
            .unwrap_or_default();
        if last == "fail please" {
            return Reply::json(401, &json!({"error": {"message": "bad key"}}));
        }
        Reply::new(
            200,
            sse(
                &["Hel", "lo", "!"],
                json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}),
            ),
        )
        .header("Content-Type", "text/event-stream")
    });
    let key = "sk-router-test-0123456789";
    let (d, addr) = router_daemon_env("", &[("ROUTER_TEST_API_KEY", key)]);
    let mut c = Rc::connect(&addr);
    let (swarm, job) = launch(
        &mut c,
        1,
        json!({"worker_mode": "llm", "llm_base_url": fake.url("/v1"),
        "llm_model": "test-model", "llm_api_key_env": "ROUTER_TEST_API_KEY"}),
    );
    let r = inject_wait(&mut c, &swarm, json!(0), "hi there");
    assert_eq!(r[0].1, "Hello!");
    let deltas = c.contents("assistant_delta");
    assert_eq!(deltas, ["Hel", "lo", "!"]);
    assert_eq!(
        c.seen.iter().filter(|v| v["event"] == "assistant").count(),
        1,
        "one answer per turn"
    );
    let u = c.wait("usage", |v| v["event"] == "usage");
    assert_eq!(
        (
            u["data"]["total_tokens"].as_u64(),
            u["data"]["input_tokens"].as_u64(),
            u["data"]["output_tokens"].as_u64()
        ),
        (Some(8), Some(5), Some(3))
    );
    // The second turn carries the conversation.
    inject_wait(&mut c, &swarm, json!(0), "and again");
    let reqs = fake.wait_requests(2, T);
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
    let b = reqs[1].json();
    assert_eq!(b["stream"], true);
    assert_eq!(b["model"], "test-model");
    let roles: Vec<&str> = b["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    // The key is in no file of the workspace and on no command line.
    let settings =
        std::fs::read_to_string(workspace(&d).join("runs").join(&job).join("worker.json")).unwrap();
    assert!(!settings.contains(key), "{settings}");
    let pid = worker_pid(&d, &job, 0);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(key));
    // An error from the server: agent_error, turn still completes, key not quoted.
    inject_wait(&mut c, &swarm, json!(0), "fail please");
    let e = c.wait("agent_error", |v| v["event"] == "agent_error");
    let msg = e["data"]["message"].as_str().unwrap();
    assert!(
        msg.contains("401") && msg.contains("bad key") && !msg.contains(key),
        "{msg}"
    );
    terminate(&mut c, &swarm);
}

#[test]
fn enqueue_inject_with_each_selector() {
    let (_d, addr) = router_daemon("");
    let mut c = Rc::connect(&addr);
    let (src, _) = launch(&mut c, 1, json!({}));
    let (dst, _) = launch(&mut c, 3, json!({"mock_delay_ms": 300}));
    let (other, _) = launch(&mut c, 1, json!({}));
    let enq = |c: &mut Rc, target: &str, sel: Value, content: &str| -> (String, String) {
        let mut p = json!({"source_swarm_id": src, "target_swarm_id": target, "content": content});
        for (k, v) in sel.as_object().unwrap() {
            p[k] = v.clone();
        }
        let rid = c.command("enqueue_inject", p);
        let e = c.answer(&rid, "inter_swarm_enqueued");
        (rid, e["data"]["queue_id"].as_str().unwrap().to_string())
    };
    // idle: one node each, first free ones.
    let (r1, q1) = enq(&mut c, &dst, json!({"selector": "idle"}), "idle one");
    let d1 = c.answer(&r1, "inter_swarm_dispatched");
    assert_eq!(
        (
            d1["data"]["queue_id"].as_str(),
            d1["data"]["node_ids"].clone()
        ),
        (Some(q1.as_str()), json!([0]))
    );
    let (r2, _) = enq(&mut c, &dst, json!({"selector": "idle"}), "idle two");
    assert_eq!(
        c.answer(&r2, "inter_swarm_dispatched")["data"]["node_ids"],
        json!([1])
    );
    // all: waits until every node is free (node 0 and 1 are busy for a while).
    let (r3, q3) = enq(&mut c, &dst, json!({"selector": "all"}), "everyone");
    let b = c.answer(&r3, "inter_swarm_blocked");
    assert_eq!(b["data"]["queue_id"], q3.as_str());
    // Another target is not held up by the blocked item.
    let (r4, _) = enq(&mut c, &other, json!({"selector": "idle"}), "elsewhere");
    c.answer(&r4, "inter_swarm_dispatched");
    let q = c.ask("queue_list", json!({}), "queue_list");
    assert_eq!(q["data"]["items"][0]["status"], "blocked");
    let d3 = c.answer(&r3, "inter_swarm_dispatched");
    assert_eq!(d3["data"]["node_ids"], json!([0, 1, 2]));
    for inj in d3["data"]["injection_ids"].as_array().unwrap() {
        let a = c.wait("the dispatched answer", |v| {
            v["event"] == "assistant" && v["data"]["injection_id"] == *inj
        });
        assert_eq!(
            a["data"]["content"],
            "Mock worker received prompt: everyone"
        );
        c.wait("turn end", |v| {
            v["event"] == "turn_complete" && v["data"]["injection_id"] == *inj
        });
    }
    // nodes: exactly those nodes.
    let (r5, _) = enq(
        &mut c,
        &dst,
        json!({"selector": "nodes", "nodes": [2, 0]}),
        "two of them",
    );
    let d5 = c.answer(&r5, "inter_swarm_dispatched");
    let mut ids: Vec<u64> = d5["data"]["node_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [0, 2]);
    assert!(c.seen.iter().any(|v| v["event"] == "queue_updated"));
    // Refusals: a node out of range, an unknown target.
    assert!(c.refuse("enqueue_inject", json!({"source_swarm_id": src, "target_swarm_id": dst, "selector": "nodes", "nodes": [9], "content": "x"})).contains("out of range"));
    assert_eq!(
        c.refuse(
            "enqueue_inject",
            json!({"source_swarm_id": src, "target_swarm_id": "nope", "content": "x"})
        ),
        "unknown target_swarm_id"
    );
    // An item whose target goes away is dropped with a reason.
    let busy_all = c.command("inject", json!({"swarm_id": dst, "content": "keep busy"}));
    c.answer(&busy_all, "inject_ack");
    let (r6, _) = enq(&mut c, &dst, json!({"selector": "all"}), "never");
    c.answer(&r6, "inter_swarm_blocked");
    terminate(&mut c, &dst);
    let dr = c.answer(&r6, "inter_swarm_dropped");
    assert!(
        dr["data"]["reason"].as_str().unwrap().contains("terminat"),
        "{dr}"
    );
    assert_eq!(
        c.ask("queue_list", json!({}), "queue_list")["data"]["items"],
        json!([])
    );
    terminate(&mut c, &src);
    terminate(&mut c, &other);
}

#[test]
fn approvals_round_trip_through_a_worker_and_survive_kill_9() {
    let (mut d, addr) = router_daemon("");
    let mut c = Rc::connect(&addr);
    let (swarm, job) = launch(
        &mut c,
        1,
        json!({"worker_mode": "command", "approval": true,
        "worker_command": ["echo", "ran it"]}),
    );
    let (_, inj) = c.inject_acked(json!({"swarm_id": swarm, "content": "go"}));
    let req = c.wait("the approval request", |v| {
        v["event"] == "exec_approval_required"
    });
    let call = req["data"]["call_id"].as_str().unwrap().to_string();
    assert_eq!(req["data"]["injection_id"], inj.as_str());
    assert_eq!(req["data"]["command"], json!(["echo", "ran it"]));
    let list = c.ask("approvals_list", json!({}), "approvals_list");
    let pending = &list["data"]["approvals"][&swarm]["0"];
    assert_eq!(pending[0]["call_id"], call.as_str(), "{list}");
    // The daemon crashes; the approval is still there after the restart.
    d.kill9();
    d.spawn().unwrap();
    let addr = router_addr(&d);
    let mut c = Rc::connect(&addr);
    let list = c.ask("approvals_list", json!({}), "approvals_list");
    assert_eq!(
        list["data"]["approvals"][&swarm]["0"][0]["call_id"],
        call.as_str(),
        "{list}"
    );
    let ok = c.command("approve_execution", json!({"job_id": job, "call_id": call, "node_id": 0, "approved": true, "decision": "approved"}));
    let sub = c.answer(&ok, "exec_approval_submitted");
    assert_eq!(sub["data"]["approved"], true);
    let res = c.answer(&ok, "exec_approval_resolved");
    assert_eq!(
        (
            res["data"]["call_id"].as_str(),
            res["data"]["decision"].as_str()
        ),
        (Some(call.as_str()), Some("approved"))
    );
    let a = c.wait("the answer", |v| {
        v["event"] == "assistant" && v["data"]["injection_id"] == inj.as_str()
    });
    assert_eq!(a["data"]["content"], "ran it\n");
    let list = c.ask("approvals_list", json!({}), "approvals_list");
    assert_eq!(list["data"]["approvals"], json!({}));
    assert_eq!(
        c.refuse(
            "approve_execution",
            json!({"job_id": job, "call_id": call, "approved": true})
        ),
        "unknown approval request"
    );
    // A denial: the command does not run.
    let (_, inj) = c.inject_acked(json!({"swarm_id": swarm, "content": "again"}));
    let req = c.wait("the second request", |v| {
        v["event"] == "exec_approval_required" && v["data"]["injection_id"] == inj.as_str()
    });
    let no = c.command(
        "approve_execution",
        json!({"job_id": job, "call_id": req["data"]["call_id"], "approved": false}),
    );
    assert_eq!(
        c.answer(&no, "exec_approval_resolved")["data"]["approved"],
        false
    );
    let a = c.wait("the refusal", |v| {
        v["event"] == "assistant" && v["data"]["injection_id"] == inj.as_str()
    });
    assert!(
        a["data"]["content"]
            .as_str()
            .unwrap()
            .contains("not approved")
    );
    terminate(&mut c, &swarm);
}

/// A client socket with a tiny receive buffer, so that not reading backs up quickly.
fn stubborn_client(addr: &str) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let sa: std::net::SocketAddrV4 = addr.parse().unwrap();
    // SAFETY: plain socket calls on a descriptor owned here, handed to TcpStream at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            4,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: sa.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*sa.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
        std::net::TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn a_client_that_does_not_read_is_dropped_and_others_keep_receiving() {
    let (d, addr) = router_daemon("client_queue_bytes = 262144\n");
    let mut lazy = stubborn_client(&addr);
    let mut c = Rc::connect(&addr);
    wait_for("both clients", T, || {
        (router_stats(&d)["clients"] == 2).then_some(())
    });
    let (swarm, _) = launch(&mut c, 2, json!({}));
    let big = "x".repeat(16 * 1024);
    // The reader reads as it goes (it too has only its allowance); the lazy one never does.
    for i in 0..128 {
        let rid = c.command(
            "inject",
            json!({"swarm_id": swarm, "content": format!("{i} {big}")}),
        );
        c.wait("delivered", |v| {
            v["event"] == "inject_delivered" && v["data"]["request_id"] == rid.as_str()
        });
        let acks: Vec<String> = c
            .seen
            .iter()
            .filter(|v| v["event"] == "inject_ack" && v["data"]["request_id"] == rid.as_str())
            .map(|v| v["data"]["injection_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(acks.len(), 2);
        for inj in acks {
            c.wait("turn end", |v| {
                v["event"] == "turn_complete" && v["data"]["injection_id"] == inj.as_str()
            });
        }
    }
    let stats = wait_for("the lazy client to be dropped", T, || {
        let s = router_stats(&d);
        (s["clients_dropped"].as_u64() >= Some(1)).then_some(s)
    });
    assert_eq!(stats["clients"], 1, "{stats}");
    assert!(stats["events_dropped"].as_u64() > Some(0), "{stats}");
    // The lazy client finds its connection closed, after complete lines only (a last line
    // cut by the drop has no newline and is never followed by more bytes).
    lazy.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut lazy, &mut got);
    let text = String::from_utf8_lossy(&got);
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for line in complete.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:.200}"));
        assert_eq!(v["type"], "event");
    }
    assert!(
        complete.lines().count() < c.seen.len(),
        "the lazy client cannot have received everything"
    );
    // The router goes on.
    inject_wait(&mut c, &swarm, json!(0), "still here");
    terminate(&mut c, &swarm);
}

#[test]
fn malformed_lines_are_refused_and_nothing_stops_the_router() {
    let (d, addr) = router_daemon("");
    let mut c = Rc::connect(&addr);
    let reason_of_next = |c: &mut Rc| -> Value {
        let v = c.read_event(Instant::now() + T).expect("an answer");
        assert_eq!(v["event"], "command_rejected", "{v}");
        v["data"].clone()
    };
    let cases: Vec<(&[u8], &str)> = vec![
        (b"{not json\n", "invalid JSON"),
        (b"\xff\xfe{}\n", "not valid UTF-8"),
        (b"[1, 2, 3]\n", "must be a JSON object"),
        (b"42\n", "must be a JSON object"),
        (b"null\n", "must be a JSON object"),
    ];
    for (line, want) in cases {
        c.send_raw(line);
        let d = reason_of_next(&mut c);
        assert!(
            d["reason"].as_str().unwrap().contains(want),
            "{:?}: {d}",
            String::from_utf8_lossy(line)
        );
        assert_eq!(d["request_id"], Value::Null);
    }
    // Envelope problems keep their request id.
    let p = PROTOCOL;
    for (line, want) in [
        (
            format!(
                "{{\"protocol\":\"{p}\",\"command\":\"swarm_list\",\"request_id\":\"a\",\"payload\":null}}"
            ),
            "payload must be a JSON object",
        ),
        (
            format!(
                "{{\"protocol\":\"{p}\",\"command\":\"swarm_list\",\"request_id\":\"a\",\"payload\":[1]}}"
            ),
            "payload must be a JSON object",
        ),
        (
            format!("{{\"protocol\":\"{p}\",\"request_id\":\"a\",\"payload\":{{}}}}"),
            "missing command",
        ),
        (
            format!("{{\"protocol\":\"{p}\",\"command\":7,\"request_id\":\"a\"}}"),
            "command must be",
        ),
        (
            format!(
                "{{\"protocol\":\"{p}\",\"command\":\"inject\",\"request_id\":\"a\",\"payload\":{{\"swarm_id\":5,\"content\":\"x\"}}}}"
            ),
            "swarm_id must be a string",
        ),
        (
            format!(
                "{{\"protocol\":\"{p}\",\"command\":\"swarm_launch\",\"request_id\":\"a\",\"payload\":{{\"nodes\":\"two\"}}}}"
            ),
            "nodes must be",
        ),
        (
            format!(
                "{{\"protocol\":\"{p}\",\"command\":\"swarm_launch\",\"request_id\":\"a\",\"payload\":{{\"nodes\":1,\"provider_params\":\"x\"}}}}"
            ),
            "provider_params must be an object",
        ),
        (
            format!("{{\"protocol\":\"{p}\",\"command\":\"no_such\",\"request_id\":\"a\"}}"),
            "unknown command",
        ),
    ] {
        c.send_line(&line);
        let d = reason_of_next(&mut c);
        assert!(d["reason"].as_str().unwrap().contains(want), "{line}: {d}");
        assert_eq!(d["request_id"], "a");
    }
    c.send_line(&format!(
        "{{\"protocol\":\"{p}\",\"command\":\"swarm_list\",\"request_id\":{{\"x\":1}}}}"
    ));
    assert!(
        reason_of_next(&mut c)["reason"]
            .as_str()
            .unwrap()
            .contains("request_id")
    );
    // Ignored: other protocols and lines without one, blank lines.
    c.send_raw(b"{\"command\":\"swarm_list\",\"request_id\":\"ignored1\"}\n");
    c.send_raw(b"{\"protocol\":\"codeswarm.router.v0\",\"command\":\"swarm_list\",\"request_id\":\"ignored2\"}\n\n\r\n");
    // A command split over several writes, with CRLF, still works, and later lines too.
    let line = format!(
        "{{\"protocol\":\"{p}\",\"command\":\"swarm_list\",\"request_id\":\"split\",\"payload\":{{}}}}\r\n"
    );
    for part in line.as_bytes().chunks(7) {
        c.send_raw(part);
        std::thread::sleep(Duration::from_millis(2));
    }
    let v = reason_or_event(&mut c);
    assert_eq!(
        (v["event"].as_str(), v["data"]["request_id"].as_str()),
        (Some("swarm_list"), Some("split"))
    );
    assert!(c.seen.iter().all(|v| v["data"]["request_id"] != "ignored1" && v["data"]["request_id"] != "ignored2"));
    // A client that vanishes mid-line does not disturb anyone.
    let mut gone = std::net::TcpStream::connect(&addr).unwrap();
    gone.write_all(b"{\"protocol\":\"codeswarm.rou").unwrap();
    drop(gone);
    c.ask("providers_list", json!({}), "providers_list");
    assert!(router_stats(&d)["commands_rejected"].as_u64() >= Some(14));
}

fn reason_or_event(c: &mut Rc) -> Value {
    c.read_event(Instant::now() + T).expect("an event")
}

#[test]
fn a_line_over_the_cap_is_refused_and_the_stream_goes_on() {
    let (_d, addr) = router_daemon("max_line_bytes = 1024\n");
    let mut c = Rc::connect(&addr);
    let huge = format!(
        "{{\"protocol\":\"{PROTOCOL}\",\"command\":\"swarm_list\",\"request_id\":\"big\",\"payload\":{{\"pad\":\"{}\"}}}}\n",
        "y".repeat(200_000)
    );
    // Sent in pieces; the router answers once and skips the rest of the line.
    for part in huge.as_bytes().chunks(16 * 1024) {
        c.send_raw(part);
    }
    let v = c.read_event(Instant::now() + T).unwrap();
    assert_eq!(v["event"], "command_rejected");
    assert_eq!(
        v["data"]["reason"],
        "line too long: at most 1024 bytes (router.max_line_bytes)"
    );
    let v = c.ask("swarm_list", json!({}), "swarm_list");
    assert_eq!(v["data"]["swarms"], json!({}));
    assert_eq!(
        c.seen
            .iter()
            .filter(|v| v["event"] == "command_rejected")
            .count(),
        1
    );
}

#[test]
fn a_connection_from_another_user_is_refused() {
    let (d, addr) = router_daemon("");
    // It only reads: the refusal comes at once, before anything it could send.
    let script = format!(
        "import socket\ns = socket.create_connection(('{}', {}))\ns.settimeout(20)\n\
         data = b''\nwhile True:\n    b = s.recv(65536)\n    if not b: break\n    data += b\nprint(data.decode())\n",
        addr.split(':').next().unwrap(),
        addr.split(':').nth(1).unwrap()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .uid(65534)
        .gid(65534)
        .current_dir("/tmp")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["event"], "command_rejected");
    assert!(
        lines[0]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{text}"
    );
    assert!(
        d.logs()
            .contains("router: refused connection from uid 65534")
    );
    // The owner still gets in.
    Rc::connect(&addr).ask("swarm_list", json!({}), "swarm_list");
}

#[test]
fn kill_9_mid_swarm_restart_follows_from_the_right_offset() {
    let (mut d, addr) = router_daemon("");
    let mut c = Rc::connect(&addr);
    let (swarm, job) = launch(&mut c, 2, json!({"mock_delay_ms": 2500}));
    let (slow, _) = launch(&mut c, 1, json!({"mock_delay_ms": 4000}));
    inject_wait(&mut c, &swarm, json!("all"), "before the crash");
    // A queue item waiting for a busy node...
    let busy = c.command("inject", json!({"swarm_id": slow, "content": "hold on"}));
    c.answer(&busy, "inject_delivered");
    let q = c.command("enqueue_inject", json!({"source_swarm_id": swarm, "target_swarm_id": slow, "selector": "idle", "content": "queued across the crash"}));
    let queue_id = c.answer(&q, "inter_swarm_enqueued")["data"]["queue_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.answer(&q, "inter_swarm_blocked");
    // ...and a turn in progress when the daemon dies.
    let (rid, inj) =
        c.inject_acked(json!({"swarm_id": swarm, "nodes": 0, "content": "during the crash"}));
    c.answer(&rid, "inject_delivered");
    d.kill9();
    // The worker must answer after the crash: its outbox (not only what this client read,
    // which misses what the dead daemon had not written to the socket yet) has no record of
    // the injection at this point.
    let out0 = outbox(&d, &job, 0);
    assert!(
        !std::fs::read_to_string(&out0).unwrap().contains(&inj),
        "the answer came before the crash: the test did not test anything"
    );
    // The worker answers while nobody watches. The new daemon reads those records as soon as
    // it starts, before this test can connect: they are held for the first client.
    wait_for("the answer written while the daemon is down", T, || {
        std::fs::read_to_string(&out0)
            .ok()
            .filter(|t| t_ends_idle(t, &inj))
            .map(|_| ())
    });
    d.spawn().unwrap();
    let addr = router_addr(&d);
    let mut c = Rc::connect(&addr);
    let list = c.ask("swarm_list", json!({}), "swarm_list");
    assert_eq!(
        list["data"]["swarms"][&swarm]["status"],
        "running",
        "{list}\n{}",
        d.logs()
    );
    // The answer made during the crash arrives once; nothing from before is replayed.
    let a = c.wait("the answer from the crash", |v| {
        v["event"] == "assistant" && v["data"]["injection_id"] == inj.as_str()
    });
    assert_eq!(
        a["data"]["content"],
        "Mock worker received prompt: during the crash"
    );
    // The queue item survived and is dispatched once the slow node is free.
    let d2 = c.wait("the queued item", |v| {
        v["event"] == "inter_swarm_dispatched" && v["data"]["queue_id"] == queue_id.as_str()
    });
    let qinj = d2["data"]["injection_ids"][0].clone();
    c.wait("its answer", |v| {
        v["event"] == "assistant" && v["data"]["injection_id"] == qinj
    });
    // And the swarm takes new work.
    let r = inject_wait(&mut c, &swarm, json!("all"), "after the restart");
    assert_eq!(r.len(), 2);
    let answers: Vec<&str> = c
        .seen
        .iter()
        .filter(|v| v["event"] == "assistant" && v["data"]["swarm_id"] == swarm.as_str())
        .map(|v| v["data"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.contains("before the crash"))
            .count(),
        0,
        "replayed: {answers:?}"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.contains("during the crash"))
            .count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.contains("after the restart"))
            .count(),
        2,
        "{answers:?}"
    );
    // Clean daemon restart too: same again, nothing replayed.
    d.stop();
    d.spawn().unwrap();
    let mut c = Rc::connect(&router_addr(&d));
    inject_wait(&mut c, &swarm, json!(1), "third life");
    assert!(
        c.seen
            .iter()
            .filter(|v| v["event"] == "assistant")
            .all(|v| v["data"]["content"]
                .as_str()
                .unwrap()
                .contains("third life"))
    );
    terminate(&mut c, &swarm);
    terminate(&mut c, &slow);
}

/// Whether the outbox text ends with the idle record of injection `inj`.
fn t_ends_idle(text: &str, inj: &str) -> bool {
    text.lines()
        .last()
        .is_some_and(|l| l.contains(inj) && l.contains("\"idle\""))
}

#[test]
fn corrupt_and_missing_record_streams_are_survived() {
    let (d, addr) = router_daemon("terminate_grace_ms = 200\n");
    let mut c = Rc::connect(&addr);
    // A worker that never writes a record: nothing to follow, the swarm still works.
    let (silent, sjob) = launch(&mut c, 1, json!({"worker_program": ["sleep", "60"]}));
    let rid = c.command("inject", json!({"swarm_id": silent, "content": "anyone?"}));
    c.answer(&rid, "inject_delivered");
    assert_eq!(
        c.ask("swarm_status", json!({"swarm_id": silent}), "swarm_status")["data"]["status"],
        "running"
    );
    // Records appear later (another writer): they are followed from the start.
    let out = outbox(&d, &sjob, 0);
    std::fs::write(&out, format!("{{\"type\": \"worker_event\", \"job_id\": \"{sjob}\", \"node_id\": 0, \"injection_id\": null, \"event\": \"assistant\", \"payload\": {{\"content\": \"late\"}}}}\n")).unwrap();
    c.wait("the late record", |v| {
        v["event"] == "assistant" && v["data"]["content"] == "late"
    });
    // It does not read its inbox: termination escalates to signals.
    terminate(&mut c, &silent);
    assert!(
        c.seen
            .iter()
            .any(|v| v["event"] == "swarm_terminate_progress" && v["data"]["stage"] == "signalled")
    );
    // A worker whose stream is damaged in every way the router can meet.
    let (swarm, job) = launch(&mut c, 1, json!({"worker_program": ["sleep", "60"]}));
    let out = outbox(&d, &job, 0);
    let ok = |text: &str| {
        format!(
            "{{\"type\": \"worker_event\", \"job_id\": \"{job}\", \"node_id\": 0, \"injection_id\": null, \"event\": \"assistant\", \"payload\": {{\"content\": \"{text}\"}}}}\n"
        )
    };
    let mut junk: Vec<u8> = Vec::new();
    junk.extend_from_slice(b"not json at all\n[1,2]\n{\"no_type\": 1}\n{\"type\": \"mystery\"}\n");
    junk.extend_from_slice(format!("{{\"type\": \"codex_rpc\", \"job_id\": \"{job}\", \"payload\": {{\"method\": \"who/knows\"}}}}\n").as_bytes());
    junk.extend_from_slice(b"{\"type\": \"start\", \"job_id\": \"someone-else\"}\n");
    junk.extend_from_slice(b"\xff\xfe invalid utf-8\n");
    junk.extend_from_slice(&vec![b'z'; 5 << 20]);
    junk.extend_from_slice(b"\n");
    junk.extend_from_slice(ok("survived").as_bytes());
    std::fs::write(&out, &junk).unwrap();
    c.wait("the good record after the junk", |v| {
        v["event"] == "assistant" && v["data"]["content"] == "survived"
    });
    let s = router_stats(&d);
    assert!(s["records"]["malformed"].as_u64() >= Some(5), "{s}");
    assert!(s["records"]["unknown"].as_u64() >= Some(2), "{s}");
    assert!(s["records"]["foreign_job"].as_u64() >= Some(1), "{s}");
    // Truncated under the router: it starts over from the beginning of the new content.
    std::fs::write(&out, ok("after truncation")).unwrap();
    c.wait("the record after truncation", |v| {
        v["event"] == "assistant" && v["data"]["content"] == "after truncation"
    });
    // A half-written last line waits for its end.
    let line = ok("in two parts");
    let (a, b) = line.split_at(40);
    let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
    f.write_all(a.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        c.seen
            .iter()
            .all(|v| v["data"]["content"] != "in two parts")
    );
    f.write_all(b.as_bytes()).unwrap();
    c.wait("the completed line", |v| {
        v["event"] == "assistant" && v["data"]["content"] == "in two parts"
    });
    // The outbox removed altogether: nothing breaks.
    std::fs::remove_file(&out).unwrap();
    c.ask("swarm_status", json!({"swarm_id": swarm}), "swarm_status");
    terminate(&mut c, &swarm);
}

#[test]
fn limits_are_enforced() {
    let (d, addr) = router_daemon(
        "max_clients = 3\nmax_nodes_per_swarm = 2\nmax_live_swarms = 1\nmax_inflight_injections = 2\n\
         max_inbox_line_bytes = 300\nmax_queue_items = 1\n",
    );
    let mut c = Rc::connect(&addr);
    let _b = Rc::connect(&addr);
    let _e = Rc::connect(&addr);
    wait_for("three clients", T, || {
        (router_stats(&d)["clients"] == 3).then_some(())
    });
    let mut extra = Rc::connect(&addr);
    assert!(extra.wait_closed(), "a fourth client must be closed");
    assert!(
        extra.seen[0]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("router.max_clients")
    );
    assert!(
        c.refuse("swarm_launch", json!({"nodes": 3}))
            .contains("router.max_nodes_per_swarm")
    );
    let (swarm, _) = launch(&mut c, 2, json!({"mock_delay_ms": 2000}));
    assert!(
        c.refuse("swarm_launch", json!({"nodes": 1}))
            .contains("router.max_live_swarms")
    );
    assert!(
        c.refuse(
            "inject",
            json!({"swarm_id": swarm, "content": "x".repeat(400)})
        )
        .contains("router.max_inbox_line_bytes")
    );
    let rid = c.command("inject", json!({"swarm_id": swarm, "content": "fill"}));
    c.answer(&rid, "inject_delivered");
    assert!(
        c.refuse(
            "inject",
            json!({"swarm_id": swarm, "nodes": 0, "content": "more"})
        )
        .contains("router.max_inflight_injections")
    );
    let q = c.command(
        "enqueue_inject",
        json!({"source_swarm_id": swarm, "target_swarm_id": swarm, "content": "later"}),
    );
    c.answer(&q, "inter_swarm_enqueued");
    assert!(
        c.refuse(
            "enqueue_inject",
            json!({"source_swarm_id": swarm, "target_swarm_id": swarm, "content": "later"})
        )
        .contains("router.max_queue_items")
    );
    terminate(&mut c, &swarm);
}

#[test]
fn swarm_events_reach_the_kernel_bus_and_the_audit_log() {
    let (d, addr) = router_daemon("");
    let mut agent = d.client();
    agent.ok(op::SUBSCRIBE, json!({"event_types": ["SWARM_EVENT"]}));
    let mut c = Rc::connect(&addr);
    let (swarm, _) = launch(&mut c, 1, json!({}));
    inject_wait(&mut c, &swarm, json!(0), "on the bus");
    terminate(&mut c, &swarm);
    let mut events: Vec<Value> = Vec::new();
    wait_for("swarm events on the bus", T, || {
        let p = agent.ok(op::POLL_EVENTS, json!({"max": 1000}));
        events.extend(p["events"].as_array().unwrap().iter().cloned());
        events
            .iter()
            .any(|e| e["data"]["event"] == "swarm_terminated")
            .then_some(())
    });
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["data"]["event"].as_str().unwrap())
        .collect();
    for want in [
        "swarm_launched",
        "inject_delivered",
        "assistant",
        "swarm_terminated",
    ] {
        assert!(names.contains(&want), "{want} not on the bus: {names:?}");
    }
    assert!(events.iter().all(|e| e["type"] == "SWARM_EVENT"));
    let a = events
        .iter()
        .find(|e| e["data"]["event"] == "assistant")
        .unwrap();
    assert_eq!(
        a["data"]["data"]["content"],
        "Mock worker received prompt: on the bus"
    );
    let log = d.client().ok(op::GET_AUDIT_LOG, json!({"limit": 1000}));
    let kinds: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    for want in [
        "SWARM_LAUNCHED",
        "SWARM_INJECTED",
        "SWARM_TERMINATE",
        "SWARM_TERMINATED",
    ] {
        assert!(kinds.contains(&want), "{want} not audited: {kinds:?}");
    }
}

#[test]
fn a_token_guards_the_router_when_one_is_set() {
    let (_d, addr) = router_daemon("token = \"0123456789abcdef0123\"\n");
    let mut c = Rc::connect(&addr);
    assert!(
        c.refuse("swarm_list", json!({}))
            .contains("authentication required")
    );
    c.send_line("{\"command\": \"auth\", \"payload\": {\"token\": \"0123456789abcdef0123\"}}");
    c.ask("swarm_list", json!({}), "swarm_list");
    let mut bad = Rc::connect(&addr);
    bad.send_line("{\"command\": \"auth\", \"payload\": {\"token\": \"wrong-token-wrong\"}}");
    assert!(bad.wait_closed());
    assert_eq!(bad.seen[0]["data"]["reason"], "authentication failed");
}

#[test]
fn worker_limits_use_the_agents_machinery() {
    let (d, addr) = router_daemon("");
    let mut c = Rc::connect(&addr);
    let (swarm, job) = launch(&mut c, 1, json!({"limits": {"memory": "512M"}}));
    let pid = worker_pid(&d, &job, 0);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let as_line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap()
        .to_string();
    assert!(
        cgroup.contains(&format!("swarm-{job}-00"))
            || as_line.contains(&(512u64 << 20).to_string()),
        "neither a cgroup nor RLIMIT_AS: {cgroup} / {as_line}"
    );
    // The worker leads its own session (it outlives the daemon).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[3],
        pid.to_string(),
        "session id = its own pid: {stat}"
    );
    inject_wait(&mut c, &swarm, json!(0), "limited");
    terminate(&mut c, &swarm);
    assert!(
        c.refuse(
            "swarm_launch",
            json!({"nodes": 1, "provider_params": {"limits": {"memory": "1K"}}})
        )
        .contains("memory")
    );
}

#[test]
fn the_swarm_cli_drives_the_router() {
    let (_d, addr) = router_daemon("");
    let cli = |args: &[&str]| -> (i32, String, String) {
        let out = Command::new(BIN)
            .arg("swarm")
            .args(args)
            .args(["--router", &addr, "--timeout", "20"])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = cli(&["providers"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ID") && out.contains("local"), "{out}");
    let (code, out, err) = cli(&["launch", "--nodes", "2", "--param", "worker_mode=mock"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("queued") && out.contains("ready") && out.contains("launched swarm"),
        "{out}"
    );
    let swarm = out
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    let (_, out, _) = cli(&["list"]);
    assert!(out.contains(&swarm) && out.contains("running"), "{out}");
    let (_, out, _) = cli(&["list", "--json"]);
    let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["event"], "swarm_list");
    let (code, out, _) = cli(&["inject", &swarm, "tell me"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "[node 0] Mock worker received prompt: tell me\n[node 1] Mock worker received prompt: tell me\n"
    );
    let (code, _, err) = cli(&["inject", &swarm, "--nodes", "4", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("out of range"), "{err}");
    let (_, out, _) = cli(&["status", &swarm]);
    assert!(out.contains("running, 2 nodes"), "{out}");
    // attach streams the swarm's events until it is terminated.
    let mut attach = Command::new(BIN)
        .args(["swarm", "attach", &swarm, "--router", &addr])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(attach.stdout.take().unwrap()).lines();
    std::thread::sleep(Duration::from_millis(300));
    let (code, _, _) = cli(&["inject", &swarm, "--nodes", "1", "watched"]);
    assert_eq!(code, 0);
    let seen = wait_for("attach output", T, || {
        let l = lines.next()?.ok()?;
        l.contains("assistant Mock worker received prompt: watched")
            .then_some(l)
    });
    assert!(seen.starts_with("[node 1]"), "{seen}");
    let (code, out, _) = cli(&["terminate", &swarm]);
    assert_eq!(code, 0);
    assert!(out.contains("terminated swarm"), "{out}");
    let st = wait_for("attach to end", T, || attach.try_wait().unwrap());
    assert!(st.success());
}

#[test]
fn a_swarm_whose_provider_cannot_answer_is_kept_as_unknown_and_comes_back() {
    let alpha = "[[router.providers]]\nid = \"alpha\"\nbackend = \"local\"\n";
    let (mut d, addr) = router_daemon(alpha);
    let mut c = Rc::connect(&addr);
    let (swarm, job) = launch(&mut c, 1, json!({}));
    let pid = worker_pid_in(&d, "alpha", &job, 0);
    d.stop();
    // The provider is gone from the config: the swarm stays, as unknown, and says why.
    std::fs::write(
        &d.config_path,
        "[router]\nlisten = \"127.0.0.1:0\"\n[[router.providers]]\nid = \"beta\"\n",
    )
    .unwrap();
    d.spawn().unwrap();
    let mut c = Rc::connect(&router_addr(&d));
    let list = c.ask("swarm_list", json!({}), "swarm_list");
    assert_eq!(
        list["data"]["swarms"][&swarm]["status"], "unknown",
        "{list}"
    );
    let st = c.ask("swarm_status", json!({"swarm_id": swarm}), "swarm_status");
    assert!(
        st["data"]["unknown_reason"]
            .as_str()
            .unwrap()
            .contains("alpha"),
        "{st}"
    );
    assert!(
        c.refuse("inject", json!({"swarm_id": swarm, "content": "x"}))
            .contains("unknown")
    );
    assert!(
        c.refuse("swarm_terminate", json!({"swarm_id": swarm}))
            .contains("not configured")
    );
    assert!(pid_alive(pid), "its worker was left alone");
    // Back in the config: adopted again, running, answering.
    d.stop();
    std::fs::write(
        &d.config_path,
        format!("[router]\nlisten = \"127.0.0.1:0\"\n{alpha}"),
    )
    .unwrap();
    d.spawn().unwrap();
    let mut c = Rc::connect(&router_addr(&d));
    wait_for("the swarm to run again", T, || {
        let st = c.ask("swarm_status", json!({"swarm_id": swarm}), "swarm_status");
        (st["data"]["status"] == "running").then_some(())
    });
    let r = inject_wait(&mut c, &swarm, json!(0), "welcome back");
    assert_eq!(r[0].1, "Mock worker received prompt: welcome back");
    assert_eq!(
        worker_pid_in(&d, "alpha", &job, 0),
        pid,
        "the same worker, not a new one"
    );
    terminate(&mut c, &swarm);
}

#[test]
fn an_interrupted_termination_resumes_after_kill_9() {
    let (mut d, addr) = router_daemon("terminate_grace_ms = 3000\n");
    let mut c = Rc::connect(&addr);
    // A worker that ignores the shutdown line: only signals end it.
    let (swarm, job) = launch(&mut c, 1, json!({"worker_program": ["sleep", "120"]}));
    // This job's worker: found by the environment the router gave it, not by its name.
    let pids = wait_for("the sleeping worker", T, || {
        let out = Command::new("pgrep")
            .args(["-f", "^sleep 120$"])
            .output()
            .ok()?;
        let p: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|e| {
                    e.split(|&b| b == 0)
                        .any(|v| v == format!("CODESWARM_JOB_ID={job}").as_bytes())
                })
            })
            .collect();
        (!p.is_empty()).then_some(p)
    });
    let rid = c.command("swarm_terminate", json!({"swarm_id": swarm}));
    assert_eq!(
        c.answer(&rid, "swarm_status")["data"]["status"],
        "terminating"
    );
    c.wait("the shutdown line", |v| {
        v["event"] == "swarm_terminate_progress" && v["data"]["stage"] == "stopping"
    });
    d.kill9();
    d.spawn().unwrap();
    let mut c = Rc::connect(&router_addr(&d));
    // The new daemon carries it out and answers the original request.
    let done = c.wait("the end of the termination", |v| {
        v["event"] == "swarm_terminated" && v["data"]["swarm_id"] == swarm.as_str()
    });
    assert_eq!(done["data"]["request_id"], rid.as_str());
    let st = c.ask("swarm_status", json!({"swarm_id": swarm}), "swarm_status");
    assert_eq!(st["data"]["status"], "terminated");
    for p in pids {
        let deadline = Instant::now() + T;
        while pid_alive(p) {
            assert!(
                Instant::now() < deadline,
                "worker {p} still runs: {}\ndaemon log:\n{}",
                std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default(),
                d.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn a_slurm_provider_without_sbatch_is_listed_disabled_and_refuses_launches() {
    // PATH without Slurm's commands: the provider says why it cannot launch, and the local
    // provider beside it still works.
    let ws = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[router.providers]]\nid = \"local\"\nbackend = \"local\"\n\
         [[router.providers]]\nid = \"hpc\"\nbackend = \"slurm\"\nworkspace_root = \"{}\"\n",
        ws.path().display()
    );
    let (_d, addr) = router_daemon_env(&toml, &[("PATH", "/nonexistent:/usr/local/nobin")]);
    let mut c = Rc::connect(&addr);
    let v = c.ask("providers_list", json!({}), "providers_list");
    let hpc = v["data"]["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "hpc")
        .cloned()
        .unwrap_or_else(|| panic!("no hpc provider: {v}"));
    assert_eq!(hpc["disabled"], true, "{hpc}");
    assert!(
        hpc["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("sbatch is not on this host's PATH")),
        "{hpc}"
    );
    let rid = c.command("swarm_launch", json!({"nodes": 1, "provider": "hpc"}));
    let why = c.rejected(&rid);
    assert!(why.contains("sbatch is not on this host's PATH"), "{why}");
    let (swarm, _) = launch(&mut c, 1, json!({}));
    terminate(&mut c, &swarm);
}
