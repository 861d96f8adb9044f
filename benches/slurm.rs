//! Slurm benchmark (issue 12), against the test cluster (`scripts/cluster.sh`, named by
//! `CLOVE_TEST_CLUSTER=DIR`; `scripts/test.sh` starts one), each figure next to an anchor from
//! the same run:
//! * inject latency over ssh (a Slurm provider with `login_host` = the cluster's sshd, one
//!   worker, injections one after the other): inject → `inject_delivered` (the inbox line
//!   appended on the login host) and inject → `assistant` (the answer back through the remote
//!   follower), p50/p99, with the multiplexed connection and with one new ssh connection per
//!   command (`ssh_multiplex = false`, the old router's way); anchors: a bare `ssh ... true`
//!   through an open master, and with a new connection each time;
//! * the cost of one poll with 50 live jobs in the queue (held jobs of this user): clove's one
//!   `squeue` for all of them (locally and over the multiplexed ssh) against the old router's
//!   one `ssh host squeue -j ID` per swarm; anchor: a bare `squeue -h`.
//!
//! Sizes: `SLURM_BENCH_INJECTIONS` (100), `SLURM_BENCH_JOBS` (50). Under `cargo test` (no
//! `--bench`) it does a few of each, as a check that it still works.

use clove::router::provider::slurm::query;
use clove::router::provider::slurm::shell::{Shell, Ssh};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::{RouterClient, Server, percentile};

const WAIT: Duration = Duration::from_secs(60);

fn cluster_env() -> HashMap<String, String> {
    let dir = std::env::var("CLOVE_TEST_CLUSTER").unwrap_or_else(|_| {
        panic!("CLOVE_TEST_CLUSTER is not set: run scripts/test.sh (it starts the test cluster)")
    });
    std::fs::read_to_string(Path::new(&dir).join("env"))
        .unwrap_or_else(|e| panic!("{dir}/env: {e}; run scripts/test.sh"))
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ssh_options(e: &HashMap<String, String>) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-p",
        &e["CLUSTER_SSH_PORT"],
        "-i",
        &e["CLUSTER_SSH_KEY"],
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        &format!("UserKnownHostsFile={}", e["CLUSTER_SSH_KNOWN_HOSTS"]),
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "LogLevel=ERROR",
    ]
    .map(String::from)
    .to_vec()
}

fn host(e: &HashMap<String, String>) -> String {
    format!("{}@{}", e["CLUSTER_SSH_USER"], e["CLUSTER_SSH_HOST"])
}

/// A daemon with one Slurm provider, `hpc`, whose login host is the cluster's sshd.
fn start(e: &HashMap<String, String>, multiplex: bool) -> Server {
    let config = format!(
        "[router]\nlisten = \"127.0.0.1:0\"\nslurm_poll_secs = 5\nterminate_grace_ms = 1000\n\
         [[router.providers]]\nid = \"hpc\"\nbackend = \"slurm\"\nworkspace_root = \"{{dir}}/ws\"\n\
         login_host = \"{}\"\nssh_options = {}\nssh_multiplex = {multiplex}\n",
        host(e),
        json!(ssh_options(e))
    );
    Server::clove("clove-sbench", &config, &[])
}

fn timed(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v
}

/// (inject → inject_delivered, inject → assistant), one worker over ssh.
fn inject_latency(
    e: &HashMap<String, String>,
    multiplex: bool,
    n: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let d = start(e, multiplex);
    let mut c = RouterClient::connect(d.listener("router"), WAIT);
    let swarm = c.launch(1, json!({"provider": "hpc"}));
    let (mut delivered, mut answered) = (Vec::new(), Vec::new());
    for i in 0..n + 2 {
        let t = Instant::now();
        let rid = c.send(
            "inject",
            json!({"swarm_id": swarm, "nodes": 0, "content": format!("q{i}")}),
        );
        let ack =
            c.until(|v| v["event"] == "inject_ack" && v["data"]["request_id"] == rid.as_str());
        let inj = ack["data"]["injection_id"].clone();
        // The answer may come back before the delivery's acknowledgement: take each event's
        // time as it arrives, in whatever order, until both the delivery and the turn's end.
        let (mut td, mut ta, mut done) = (None, None, false);
        while td.is_none() || !done {
            let v = c.until(|v| v["data"]["injection_id"] == inj);
            match v["event"].as_str() {
                Some("inject_delivered") => td = Some(t.elapsed()),
                Some("assistant") => ta = Some(t.elapsed()),
                Some("turn_complete") => done = true,
                _ => {}
            }
        }
        let (td, ta) = (td.expect("delivered"), ta.expect("an assistant answer"));
        if i >= 2 {
            delivered.push(td);
            answered.push(ta);
        }
    }
    c.terminate(&swarm, true);
    delivered.sort();
    answered.sort();
    (delivered, answered)
}

fn shell(e: &HashMap<String, String>, ssh: Option<(bool, PathBuf)>) -> Shell {
    Shell {
        ssh: ssh.map(|(multiplex, control_dir)| Ssh {
            host: host(e),
            command: vec!["ssh".into()],
            options: ssh_options(e),
            control_dir,
            multiplex,
        }),
        timeout: Duration::from_secs(60),
    }
}

fn words(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

struct PollCost {
    bare: Vec<Duration>,
    local: Vec<Duration>,
    mux: Vec<Duration>,
    old: Vec<Duration>,
}

/// One poll's cost with `jobs` held jobs of this user in the queue.
fn poll_cost(e: &HashMap<String, String>, jobs: usize, rounds: usize, ctl: &Path) -> PollCost {
    let here = shell(e, None);
    let mux = shell(e, Some((true, ctl.to_path_buf())));
    let fresh = shell(e, Some((false, ctl.to_path_buf())));
    let ids: Vec<String> = (0..jobs)
        .map(|i| {
            let a = words(&[
                "sbatch",
                "--parsable",
                "--hold",
                &format!("--job-name=clove-bench-{i}"),
                "--wrap",
                "true",
            ]);
            here.run_ok(&a, b"")
                .expect("sbatch")
                .stdout_text()
                .trim()
                .to_string()
        })
        .collect();
    let check = |sh: &Shell| {
        let o = sh.run_ok(&query::squeue_argv(), b"").expect("squeue");
        let q = query::parse_squeue(&o.stdout_text());
        assert!(ids.iter().all(|i| q.contains_key(i)), "every job listed");
    };
    let bare = timed(rounds, || {
        here.run_ok(&words(&["squeue", "-h"]), b"").expect("squeue");
    });
    let local = timed(rounds, || check(&here));
    let muxed = timed(rounds, || check(&mux));
    // The old router: one new ssh connection and one squeue per swarm, every poll.
    let old = timed(rounds.min(2), || {
        for id in &ids {
            fresh
                .run_ok(&words(&["squeue", "-j", id, "-h", "-o", "%T"]), b"")
                .expect("squeue -j");
        }
    });
    let mut cancel = words(&["scancel"]);
    cancel.extend(ids);
    let _ = here.run_ok(&cancel, b"");
    mux.close();
    PollCost {
        bare,
        local,
        mux: muxed,
        old,
    }
}

fn line(what: &str, v: &[Duration]) {
    println!(
        "  {what:<58} n={:<4} p50 {:>8.2} ms  p99 {:>8.2} ms",
        v.len(),
        percentile(v, 0.5),
        percentile(v, 0.99)
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let size = |name: &str, full: usize, smoke: usize| {
        if bench {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(full)
        } else {
            smoke
        }
    };
    let (n_inj, n_jobs) = (
        size("SLURM_BENCH_INJECTIONS", 100, 3),
        size("SLURM_BENCH_JOBS", 50, 3),
    );
    let e = cluster_env();
    // SAFETY: setting this process's environment before any thread of ours reads it.
    unsafe { std::env::set_var("SLURM_CONF", &e["SLURM_CONF"]) };
    let ctl = tempfile::Builder::new()
        .prefix("cs")
        .tempdir_in("/tmp")
        .expect("dir");
    let fresh = shell(&e, Some((false, ctl.path().into())));
    let mux = shell(&e, Some((true, ctl.path().into())));
    let t = words(&["true"]);
    let ssh_fresh = timed(n_inj.min(30), || {
        fresh.run_ok(&t, b"").expect("ssh");
    });
    mux.run_ok(&t, b"").expect("ssh master");
    let ssh_mux = timed(n_inj, || {
        mux.run_ok(&t, b"").expect("ssh");
    });
    mux.close();
    let (m_del, m_ans) = inject_latency(&e, true, n_inj);
    let (f_del, f_ans) = inject_latency(&e, false, n_inj);
    let poll = poll_cost(&e, n_jobs, if bench { 20 } else { 2 }, ctl.path());

    println!("slurm benchmark (test cluster: one node, sshd on 127.0.0.1:2222; mock worker)");
    line("inject -> inject_delivered, ssh multiplexed", &m_del);
    line(
        "inject -> inject_delivered, new ssh connection per call",
        &f_del,
    );
    line("inject -> assistant, ssh multiplexed", &m_ans);
    line("inject -> assistant, new ssh connection per call", &f_ans);
    line("  anchor: ssh ... true through the open master", &ssh_mux);
    line("  anchor: ssh ... true, a new connection", &ssh_fresh);
    line(
        &format!("one poll, {n_jobs} live jobs: squeue --me (here)"),
        &poll.local,
    );
    line(
        &format!("one poll, {n_jobs} live jobs: squeue --me over the ssh master"),
        &poll.mux,
    );
    line(
        &format!("one poll, {n_jobs} live jobs: old router, ssh squeue -j per swarm"),
        &poll.old,
    );
    line("  anchor: bare squeue -h (here)", &poll.bare);
}
