//! The Slurm provider against a real single-node Slurm (and a real sshd for the login-host
//! mode), started by `scripts/test.sh` through `scripts/cluster.sh` and named by
//! `CLOVE_TEST_CLUSTER=DIR`. A test binary of its own, so cargo runs it after the main suite;
//! inside it the tests take turns (one cluster, two CPUs: jobs of concurrent tests would wait
//! for each other). Without the cluster these tests fail, never skip.

#[path = "harness.rs"]
mod harness;
#[path = "router_support.rs"]
mod router_support;

use harness::{Daemon, op, wait_for};
use router_support::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static TURN: Mutex<()> = Mutex::new(());

/// The started test cluster: `DIR/env` read into a map.
struct Cluster {
    dir: PathBuf,
    env: HashMap<String, String>,
    _turn: MutexGuard<'static, ()>,
}

fn cluster() -> Cluster {
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::var("CLOVE_TEST_CLUSTER").unwrap_or_else(|_| {
        panic!(
            "CLOVE_TEST_CLUSTER is not set: the Slurm tests need the test cluster; run \
             scripts/test.sh (it installs and starts Slurm and sshd, then runs cargo test)"
        )
    });
    let text = std::fs::read_to_string(Path::new(&dir).join("env")).unwrap_or_else(|e| {
        panic!("CLOVE_TEST_CLUSTER={dir}: cannot read {dir}/env ({e}); run scripts/test.sh")
    });
    let env: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let c = Cluster {
        dir: PathBuf::from(dir),
        env,
        _turn: turn,
    };
    let out = c.slurm("sinfo", &["-h", "-o", "%T"]);
    assert!(
        out.contains("idle") || out.contains("mixed") || out.contains("alloc"),
        "the test cluster is not usable (sinfo: {out:?}); run scripts/test.sh"
    );
    c
}

impl Cluster {
    fn get(&self, k: &str) -> &str {
        self.env
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing from the cluster's env"))
    }

    /// A Slurm command run by the test itself.
    fn slurm(&self, cmd: &str, args: &[&str]) -> String {
        let o = std::process::Command::new(cmd)
            .args(args)
            .env("SLURM_CONF", self.get("SLURM_CONF"))
            .output()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// sacct's state of a job (the allocation's line).
    fn sacct_state(&self, job: &str) -> String {
        self.slurm("sacct", &["-X", "-n", "-P", "-o", "State", "-j", job])
            .trim()
            .to_string()
    }

    fn script(&self, what: &str) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let st = std::process::Command::new(root.join("scripts/cluster.sh"))
            .arg(what)
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "cluster.sh {what}");
    }

    /// The daemon's environment: Slurm's config (the daemon runs sbatch itself).
    fn daemon_env(&self) -> Vec<(&str, &str)> {
        vec![("SLURM_CONF", self.get("SLURM_CONF"))]
    }

    /// ssh options that reach the cluster's sshd with its throwaway key.
    fn ssh_options(&self) -> Value {
        json!([
            "-F",
            "/dev/null",
            "-p",
            self.get("CLUSTER_SSH_PORT"),
            "-i",
            self.get("CLUSTER_SSH_KEY"),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            format!("UserKnownHostsFile={}", self.get("CLUSTER_SSH_KNOWN_HOSTS")),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "LogLevel=ERROR"
        ])
    }
}

/// A daemon with one Slurm provider `hpc` (workspace `ws`); `extra` goes into its table.
fn slurm_daemon(c: &Cluster, ws: &Path, router: &str, extra: &str) -> (Daemon, String) {
    let toml = format!(
        "slurm_poll_secs = 1\nterminate_grace_ms = 3000\n{router}\n\
         [[router.providers]]\nid = \"hpc\"\nbackend = \"slurm\"\npartition = \"{}\"\n\
         workers_per_node = 2\nworkspace_root = \"{}\"\n{extra}\n",
        c.get("CLUSTER_PARTITION"),
        ws.display()
    );
    router_daemon_env(&toml, &c.daemon_env())
}

fn launch_on(c: &mut Rc, nodes: u32, params: Value) -> (String, String, Vec<Value>) {
    let rid = c.command(
        "swarm_launch",
        json!({"nodes": nodes, "provider": "hpc", "provider_params": params}),
    );
    let v = c.answer(&rid, "swarm_launched");
    let progress: Vec<Value> = c
        .seen
        .iter()
        .filter(|e| e["event"] == "swarm_launch_progress" && e["data"]["request_id"] == rid)
        .cloned()
        .collect();
    (
        v["data"]["swarm_id"].as_str().unwrap().into(),
        v["data"]["job_id"].as_str().unwrap().into(),
        progress,
    )
}

/// Worker processes of a job still alive on this machine (found by their environment).
fn workers_of(job: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let needle = format!("CODESWARM_JOB_ID={job}");
        if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

fn terminate_and_check_cancelled(cl: &Cluster, c: &mut Rc, swarm: &str, job: &str) {
    let rid = c.command("swarm_terminate", json!({"swarm_id": swarm}));
    c.answer(&rid, "swarm_terminated");
    let stages: Vec<String> = c
        .seen
        .iter()
        .filter(|v| v["event"] == "swarm_terminate_progress" && v["data"]["swarm_id"] == swarm)
        .map(|v| v["data"]["stage"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(stages.iter().any(|s| s == "stopping"), "{stages:?}");
    assert!(stages.iter().any(|s| s == "cancelling"), "{stages:?}");
    let state = wait_for("sacct to record the job", T, || {
        let s = cl.sacct_state(job);
        (!s.is_empty() && !s.starts_with("RUNNING")).then_some(s)
    });
    assert!(state.starts_with("CANCELLED"), "sacct says {state:?}");
    wait_for("no worker process left", T, || {
        workers_of(job).is_empty().then_some(())
    });
}

#[test]
fn launch_inject_status_kill_9_restart_and_terminate() {
    let cl = cluster();
    let ws = tempfile::tempdir().unwrap();
    let (mut d, addr) = slurm_daemon(&cl, ws.path(), "", "");
    let mut c = Rc::connect(&addr);
    let (swarm, job, progress) = launch_on(&mut c, 2, json!({"mock_delay_ms": 1500}));
    let stages: Vec<&str> = progress
        .iter()
        .map(|p| p["data"]["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages.first(), Some(&"queued"), "{stages:?}");
    assert!(
        stages.contains(&"submitting") && stages.contains(&"submitted"),
        "{stages:?}"
    );
    assert_eq!(stages.last(), Some(&"ready"), "{stages:?}");
    assert!(
        job.chars().all(|c| c.is_ascii_digit()),
        "a Slurm job id: {job}"
    );
    let r = inject_wait(&mut c, &swarm, json!("all"), "hello slurm");
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].1, "Mock worker received prompt: hello slurm");
    let st = c.ask("swarm_status", json!({"swarm_id": swarm}), "swarm_status");
    assert_eq!(st["data"]["status"], "running", "{st}");
    assert_eq!(st["data"]["slurm_state"], "RUNNING", "{st}");
    // A turn in progress when the daemon dies: its answer is written while nobody watches.
    let (rid, inj) = c.inject_acked(json!({"swarm_id": swarm, "nodes": 0, "content": "across"}));
    c.answer(&rid, "inject_delivered");
    d.kill9();
    let out0 = ws.path().join(format!("mailbox/outbox/{job}_00.jsonl"));
    assert!(
        !std::fs::read_to_string(&out0).unwrap().contains(&inj),
        "answered before the crash"
    );
    wait_for("the answer written while the daemon is down", T, || {
        std::fs::read_to_string(&out0)
            .ok()
            .filter(|t| t.contains("received prompt: across"))
            .map(|_| ())
    });
    d.spawn().unwrap();
    let mut c = Rc::connect(&router_addr(&d));
    let list = c.ask("swarm_list", json!({}), "swarm_list");
    assert_eq!(
        list["data"]["swarms"][&swarm]["status"], "running",
        "{list}"
    );
    let a = c.wait("the answer from the crash", |v| {
        v["event"] == "assistant" && v["data"]["injection_id"] == inj.as_str()
    });
    assert_eq!(a["data"]["content"], "Mock worker received prompt: across");
    let r = inject_wait(&mut c, &swarm, json!("all"), "after the restart");
    assert_eq!(r.len(), 2);
    let answers = c.contents("assistant");
    assert_eq!(
        answers.iter().filter(|a| a.contains("hello slurm")).count(),
        0,
        "replayed: {answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| a.contains("across")).count(),
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
    assert!(d.logs().contains(&format!("submitted as Slurm job {job}")));
    terminate_and_check_cancelled(&cl, &mut c, &swarm, &job);
}

#[test]
fn a_job_cancelled_from_outside_is_reported_within_one_poll() {
    let cl = cluster();
    let ws = tempfile::tempdir().unwrap();
    let (_d, addr) = slurm_daemon(&cl, ws.path(), "", "");
    let mut c = Rc::connect(&addr);
    let (swarm, job, _) = launch_on(&mut c, 1, json!({}));
    let t = Instant::now();
    cl.slurm("scancel", &[&job]);
    let st = c.wait("swarm_status terminated", |v| {
        v["event"] == "swarm_status"
            && v["data"]["swarm_id"] == swarm.as_str()
            && v["data"]["status"] == "terminated"
    });
    let took = t.elapsed();
    assert!(
        st["data"]["slurm_state"]
            .as_str()
            .unwrap_or("")
            .starts_with("CANCELLED"),
        "{st}"
    );
    c.wait("swarm_terminated", |v| {
        v["event"] == "swarm_terminated" && v["data"]["swarm_id"] == swarm.as_str()
    });
    // One poll is 1 s here; the job takes a moment to leave the running state after scancel.
    assert!(took < Duration::from_secs(8), "noticed after {took:?}");
    let r = c.refuse("inject", json!({"swarm_id": swarm, "content": "anyone?"}));
    assert!(r.contains("terminated"), "{r}");
}

#[test]
fn an_unknown_partition_is_rejected_with_sbatchs_message() {
    let cl = cluster();
    let ws = tempfile::tempdir().unwrap();
    let (_d, addr) = slurm_daemon(&cl, ws.path(), "", "");
    let mut c = Rc::connect(&addr);
    let rid = c.command(
        "swarm_launch",
        json!({"nodes": 1, "provider": "hpc", "partition": "no-such-partition"}),
    );
    let r = launch_rejection(&mut c, &rid);
    assert!(
        r.contains("invalid partition specified: no-such-partition"),
        "{r}"
    );
    assert!(r.contains("sbatch: error"), "{r}");
    let list = c.ask("swarm_list", json!({}), "swarm_list");
    assert_eq!(
        list["data"]["swarms"].as_object().unwrap().len(),
        0,
        "{list}"
    );
}

#[test]
fn a_held_job_reports_pending_then_the_launch_times_out() {
    let cl = cluster();
    // More CPUs per task than the node has: Slurm keeps it pending (PartitionConfig, or
    // Resources), it never runs.
    let ws = tempfile::tempdir().unwrap();
    let (_d, addr) = slurm_daemon(
        &cl,
        ws.path(),
        "launch_timeout_secs = 5\n",
        "sbatch_args = [\"--cpus-per-task=64\"]",
    );
    let mut c = Rc::connect(&addr);
    let rid = c.command("swarm_launch", json!({"nodes": 1, "provider": "hpc"}));
    let reason = launch_rejection(&mut c, &rid);
    assert!(reason.contains("did not start within 5 s"), "{reason}");
    assert!(reason.contains("it was cancelled"), "{reason}");
    let pending: Vec<&Value> = c
        .seen
        .iter()
        .filter(|v| v["event"] == "swarm_launch_progress" && v["data"]["stage"] == "pending")
        .collect();
    assert!(!pending.is_empty(), "no pending progress: {:?}", c.seen);
    let msg = pending[0]["data"]["message"].as_str().unwrap();
    assert!(msg.contains("PENDING ("), "squeue's reason in {msg:?}");
    let job = c
        .seen
        .iter()
        .find(|v| v["data"]["stage"] == "submitted")
        .and_then(|v| v["data"]["message"].as_str())
        .and_then(|m| m.split_whitespace().nth(2))
        .unwrap()
        .to_string();
    let state = wait_for("sacct", T, || {
        let s = cl.sacct_state(&job);
        s.starts_with("CANCELLED").then_some(s)
    });
    assert!(state.starts_with("CANCELLED"));
}

/// The reason a launch was refused (after its progress events).
fn launch_rejection(c: &mut Rc, rid: &str) -> String {
    let v = c.wait("the launch's answer", |v| {
        v["data"]["request_id"] == rid
            && (v["event"] == "command_rejected" || v["event"] == "swarm_launched")
    });
    assert_eq!(v["event"], "command_rejected", "{v}");
    v["data"]["reason"].as_str().unwrap().to_string()
}

fn ssh_router(cl: &Cluster) -> String {
    format!(
        "login_host = \"{}@{}\"\nssh_options = {}",
        cl.get("CLUSTER_SSH_USER"),
        cl.get("CLUSTER_SSH_HOST"),
        cl.ssh_options()
    )
}

#[test]
fn over_ssh_launch_inject_and_terminate() {
    let cl = cluster();
    // The daemon has no SLURM_CONF here: every Slurm command must go through the sshd (which
    // sets it for its sessions).
    let ws = tempfile::tempdir().unwrap();
    let toml = format!(
        "slurm_poll_secs = 1\nterminate_grace_ms = 3000\n[[router.providers]]\nid = \"hpc\"\n\
         backend = \"slurm\"\nworkers_per_node = 2\nworkspace_root = \"{}\"\n{}\n",
        ws.path().display(),
        ssh_router(&cl)
    );
    let (d, addr) = router_daemon(&toml);
    let mut c = Rc::connect(&addr);
    let (swarm, job, _) = launch_on(&mut c, 2, json!({}));
    let r = inject_wait(&mut c, &swarm, json!("all"), "over ssh");
    assert_eq!(r[0].1, "Mock worker received prompt: over ssh");
    assert_eq!(r[1].1, "Mock worker received prompt: over ssh");
    // One multiplexed connection: its control socket is in a private directory.
    let ctl = d.state_dir.join("ssh");
    let meta = std::fs::metadata(&ctl).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::read_dir(&ctl).unwrap().count(),
        1,
        "one control socket"
    );
    terminate_and_check_cancelled(&cl, &mut c, &swarm, &job);
}

#[test]
fn sshd_stopped_mid_swarm_fails_injections_then_recovers() {
    let cl = cluster();
    let ws = tempfile::tempdir().unwrap();
    // Polls far apart: the injection below must meet the lost host itself, not a swarm that a
    // failed poll already turned `unknown` (which refuses injections).
    let toml = format!(
        "slurm_poll_secs = 120\nterminate_grace_ms = 3000\n[[router.providers]]\nid = \"hpc\"\n\
         backend = \"slurm\"\nworkers_per_node = 2\nworkspace_root = \"{}\"\n{}\n",
        ws.path().display(),
        ssh_router(&cl)
    );
    let (d, addr) = router_daemon(&toml);
    let mut c = Rc::connect(&addr);
    let (swarm, job, _) = launch_on(&mut c, 1, json!({}));
    inject_wait(&mut c, &swarm, json!(0), "before");
    cl.script("sshd-stop");
    let rid = c.command(
        "inject",
        json!({"swarm_id": swarm, "nodes": 0, "content": "lost"}),
    );
    let failed = c.answer(&rid, "inject_failed");
    let err = failed["data"]["error"].as_str().unwrap();
    assert!(
        err.starts_with("ssh: ") && err.contains("Connection refused"),
        "{err}"
    );
    // The daemon stays healthy: its socket and its router answer.
    d.client().ok(op::HELLO, json!({}));
    c.ask("swarm_list", json!({}), "swarm_list");
    cl.script("sshd-start");
    let r = inject_wait(&mut c, &swarm, json!(0), "back again");
    assert_eq!(r[0].1, "Mock worker received prompt: back again");
    terminate_and_check_cancelled(&cl, &mut c, &swarm, &job);
}
