//! The orchestration state machine, without I/O: a plan of tasks, each sent to its target
//! agent (or to every agent of the plan), run one at a time in order (`sequential`) or all at
//! once (`parallel`). Every input takes `now` (Unix milliseconds) and returns the
//! [`Action`]s the caller carries out (send a task, arm a deadline, announce the end); the
//! plan itself is plain data, saved whole after each change and resumed after a restart.
//!
//! Rules:
//! - Task statuses go `pending` → `running` → `completed` | `failed`, and nowhere else; a
//!   task records when it started and finished.
//! - A report counts once per task and agent: a repeat, a report for a task that is not
//!   running, and a report from an agent the task was not sent to are refused.
//! - A task sent to several agents is done when all of them reported: `failed` if any of
//!   them failed, else `completed`. A task not done by its deadline (`relay.task_timeout_secs`
//!   after it started) fails.
//! - Sequential: a failed task fails the plan; the next task starts when one completes.
//!   Parallel: the plan ends when every task is done, `failed` if any task failed.
//! - A plan that ended or was cancelled takes no more reports; cancel works on a plan that
//!   is pending or running.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sequential,
    Parallel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl PlanStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanStatus::Pending => "pending",
            PlanStatus::Running => "running",
            PlanStatus::Completed => "completed",
            PlanStatus::Failed => "failed",
            PlanStatus::Cancelled => "cancelled",
        }
    }

    /// The plan will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PlanStatus::Completed | PlanStatus::Failed | PlanStatus::Cancelled
        )
    }
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
        }
    }

    fn is_done(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed)
    }
}

/// One agent's report on a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub ok: bool,
    pub result: Value,
    pub at_ms: u64,
}

/// One task of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub description: String,
    pub command: String,
    /// `None`: the task goes to every agent of the plan.
    pub target: Option<String>,
    pub status: TaskStatus,
    pub started_ms: Option<u64>,
    pub completed_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
    /// The agents it was sent to, each of which reports once.
    pub recipients: Vec<String>,
    pub reports: BTreeMap<String, Report>,
    /// Why it failed without reports (a timeout).
    pub error: Option<String>,
}

impl Task {
    pub fn new(description: String, command: String, target: Option<String>) -> Task {
        Task {
            description,
            command,
            target,
            status: TaskStatus::Pending,
            started_ms: None,
            completed_ms: None,
            deadline_ms: None,
            recipients: Vec::new(),
            reports: BTreeMap::new(),
            error: None,
        }
    }

    /// The task's result as the seed shows it: the one report's result, or agent → result
    /// for a task sent to several agents.
    pub fn result(&self) -> Value {
        if let Some(e) = &self.error {
            return Value::String(e.clone());
        }
        match (self.recipients.len(), self.reports.values().next()) {
            (1, Some(r)) => r.result.clone(),
            (_, None) => Value::Null,
            _ => Value::Object(
                self.reports
                    .iter()
                    .map(|(a, r)| (a.clone(), r.result.clone()))
                    .collect(),
            ),
        }
    }
}

/// An orchestration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub agents: Vec<String>,
    pub mode: Mode,
    pub status: PlanStatus,
    pub tasks: Vec<Task>,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

/// What the caller must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send task `index` to `agent` (now, or when it connects).
    Send { index: usize, agent: String },
    /// Call [`Plan::timeout`] for task `index` at `at_ms`.
    Deadline { index: usize, at_ms: u64 },
    /// Task `index` is done (completed or failed).
    TaskDone { index: usize },
    /// The plan ended (its status says how).
    Finished,
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the orchestration is {0}, not pending")]
    NotPending(&'static str),
    #[error("the orchestration is {0}, not running")]
    NotRunning(&'static str),
    #[error("the orchestration has ended ({0})")]
    Ended(&'static str),
    #[error("there is no task {0}")]
    NoTask(usize),
    #[error("task {0} is {1}, not running")]
    TaskNotRunning(usize, &'static str),
    #[error("task {0} was not sent to {1}")]
    NotRecipient(usize, String),
    #[error("{1} already reported on task {0}")]
    AlreadyReported(usize, String),
}

impl Plan {
    /// The plan's tasks may run: each has a target or the plan has agents.
    pub fn check(&self) -> Result<(), String> {
        if self.tasks.is_empty() {
            return Err("an orchestration needs at least one task".into());
        }
        if let Some(i) = self
            .tasks
            .iter()
            .position(|t| t.target.is_none() && self.agents.is_empty())
        {
            return Err(format!(
                "task {i} has no targetAgentId and the orchestration names no agents"
            ));
        }
        Ok(())
    }

    /// Starts the plan: the first task (sequential) or all of them (parallel).
    pub fn start(&mut self, now: u64, timeout_ms: u64) -> Result<Vec<Action>, Refused> {
        if self.status != PlanStatus::Pending {
            return Err(Refused::NotPending(self.status.as_str()));
        }
        self.status = PlanStatus::Running;
        self.started_ms = Some(now);
        let mut actions = Vec::new();
        match self.mode {
            Mode::Sequential => self.start_task(0, now, timeout_ms, &mut actions),
            Mode::Parallel => {
                for i in 0..self.tasks.len() {
                    self.start_task(i, now, timeout_ms, &mut actions);
                }
            }
        }
        Ok(actions)
    }

    fn start_task(&mut self, i: usize, now: u64, timeout_ms: u64, actions: &mut Vec<Action>) {
        let agents = self.agents.clone();
        let Some(t) = self.tasks.get_mut(i) else {
            return;
        };
        t.status = TaskStatus::Running;
        t.started_ms = Some(now);
        let deadline = now.saturating_add(timeout_ms);
        t.deadline_ms = Some(deadline);
        t.recipients = match &t.target {
            Some(a) => vec![a.clone()],
            None => agents,
        };
        for a in &t.recipients {
            actions.push(Action::Send {
                index: i,
                agent: a.clone(),
            });
        }
        actions.push(Action::Deadline {
            index: i,
            at_ms: deadline,
        });
    }

    /// `agent` reports on task `index`.
    pub fn report(
        &mut self,
        agent: &str,
        index: usize,
        ok: bool,
        result: Value,
        now: u64,
        timeout_ms: u64,
    ) -> Result<Vec<Action>, Refused> {
        if self.status != PlanStatus::Running {
            return Err(if self.status.is_final() {
                Refused::Ended(self.status.as_str())
            } else {
                Refused::NotRunning(self.status.as_str())
            });
        }
        let t = self.tasks.get_mut(index).ok_or(Refused::NoTask(index))?;
        if t.status != TaskStatus::Running {
            return Err(Refused::TaskNotRunning(index, t.status.as_str()));
        }
        if !t.recipients.iter().any(|a| a == agent) {
            return Err(Refused::NotRecipient(index, agent.to_owned()));
        }
        if t.reports.contains_key(agent) {
            return Err(Refused::AlreadyReported(index, agent.to_owned()));
        }
        t.reports.insert(
            agent.to_owned(),
            Report {
                ok,
                result,
                at_ms: now,
            },
        );
        let mut actions = Vec::new();
        if t.reports.len() == t.recipients.len() {
            let failed = t.reports.values().any(|r| !r.ok);
            self.finish_task(index, failed, now, timeout_ms, &mut actions);
        }
        Ok(actions)
    }

    /// Task `index`'s deadline came: it fails if it is still running (a stale deadline does
    /// nothing).
    pub fn timeout(&mut self, index: usize, now: u64, timeout_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.status != PlanStatus::Running {
            return actions;
        }
        let Some(t) = self.tasks.get_mut(index) else {
            return actions;
        };
        if t.status != TaskStatus::Running || t.deadline_ms.is_none_or(|d| d > now) {
            return actions;
        }
        let missing: Vec<&str> = t
            .recipients
            .iter()
            .filter(|a| !t.reports.contains_key(*a))
            .map(String::as_str)
            .collect();
        t.error = Some(format!(
            "timed out after {} s waiting for {}",
            timeout_ms / 1000,
            missing.join(", ")
        ));
        self.finish_task(index, true, now, timeout_ms, &mut actions);
        actions
    }

    fn finish_task(
        &mut self,
        index: usize,
        failed: bool,
        now: u64,
        timeout_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let Some(t) = self.tasks.get_mut(index) else {
            return;
        };
        t.status = if failed {
            TaskStatus::Failed
        } else {
            TaskStatus::Completed
        };
        t.completed_ms = Some(now);
        actions.push(Action::TaskDone { index });
        let end = match self.mode {
            Mode::Sequential if failed => Some(PlanStatus::Failed),
            Mode::Sequential if index + 1 < self.tasks.len() => {
                self.start_task(index + 1, now, timeout_ms, actions);
                None
            }
            Mode::Sequential => Some(PlanStatus::Completed),
            Mode::Parallel if self.tasks.iter().all(|t| t.status.is_done()) => {
                let any_failed = self.tasks.iter().any(|t| t.status == TaskStatus::Failed);
                Some(if any_failed {
                    PlanStatus::Failed
                } else {
                    PlanStatus::Completed
                })
            }
            Mode::Parallel => None,
        };
        if let Some(status) = end {
            self.status = status;
            self.finished_ms = Some(now);
            actions.push(Action::Finished);
        }
    }

    /// Cancels a pending or running plan.
    pub fn cancel(&mut self, now: u64) -> Result<(), Refused> {
        if self.status.is_final() {
            return Err(Refused::Ended(self.status.as_str()));
        }
        self.status = PlanStatus::Cancelled;
        self.finished_ms = Some(now);
        Ok(())
    }

    /// Running tasks sent to `agent` that it has not reported on (what it is owed when it
    /// connects).
    pub fn outstanding(&self, agent: &str) -> Vec<usize> {
        if self.status != PlanStatus::Running {
            return Vec::new();
        }
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                t.status == TaskStatus::Running
                    && t.recipients.iter().any(|a| a == agent)
                    && !t.reports.contains_key(agent)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Deadlines of the running tasks (re-armed after a restart).
    pub fn deadlines(&self) -> Vec<Action> {
        if self.status != PlanStatus::Running {
            return Vec::new();
        }
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.status == TaskStatus::Running)
            .filter_map(|(index, t)| {
                Some(Action::Deadline {
                    index,
                    at_ms: t.deadline_ms?,
                })
            })
            .collect()
    }

    pub fn completed_count(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Completed)
            .count()
    }

    /// Everyone the plan concerns: its agents, its tasks' targets, its owner.
    pub fn participants(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .agents
            .iter()
            .chain(self.tasks.iter().filter_map(|t| t.target.as_ref()))
            .chain(std::iter::once(&self.owner))
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const T: u64 = 1000;

    fn plan(mode: Mode, targets: &[Option<&str>], agents: &[&str]) -> Plan {
        Plan {
            id: "p".into(),
            name: "n".into(),
            owner: "owner".into(),
            agents: agents.iter().map(|a| a.to_string()).collect(),
            mode,
            status: PlanStatus::Pending,
            tasks: targets
                .iter()
                .enumerate()
                .map(|(i, t)| Task::new(format!("d{i}"), format!("c{i}"), t.map(str::to_owned)))
                .collect(),
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
        }
    }

    fn sends(a: &[Action]) -> Vec<(usize, String)> {
        a.iter()
            .filter_map(|x| match x {
                Action::Send { index, agent } => Some((*index, agent.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn sequential_runs_in_order_and_a_failure_ends_it() {
        let mut p = plan(Mode::Sequential, &[Some("a"), Some("b"), Some("a")], &[]);
        let a = p.start(10, T).unwrap();
        assert_eq!(sends(&a), [(0, "a".to_string())]);
        assert!(a.contains(&Action::Deadline {
            index: 0,
            at_ms: 10 + T
        }));
        assert_eq!(p.tasks[1].status, TaskStatus::Pending);
        // b's task is not running yet: its report is refused.
        assert_eq!(
            p.report("b", 1, true, json!("x"), 11, T),
            Err(Refused::TaskNotRunning(1, "pending"))
        );
        let a = p.report("a", 0, true, json!("one"), 12, T).unwrap();
        assert_eq!(sends(&a), [(1, "b".to_string())]);
        assert_eq!(p.tasks[0].status, TaskStatus::Completed);
        assert_eq!(p.tasks[0].completed_ms, Some(12));
        assert_eq!(p.tasks[0].result(), json!("one"));
        let a = p.report("b", 1, false, json!("boom"), 13, T).unwrap();
        assert!(a.contains(&Action::Finished));
        assert_eq!(p.status, PlanStatus::Failed);
        assert_eq!(p.tasks[2].status, TaskStatus::Pending, "never started");
        assert_eq!(
            p.report("a", 2, true, json!(null), 14, T),
            Err(Refused::Ended("failed"))
        );
    }

    #[test]
    fn parallel_starts_all_and_counts_each_agent_once() {
        let mut p = plan(Mode::Parallel, &[None, Some("c")], &["a", "b"]);
        let a = p.start(0, T).unwrap();
        assert_eq!(
            sends(&a),
            [(0, "a".into()), (0, "b".into()), (1, "c".into())]
        );
        assert!(p.report("a", 0, true, json!(1), 1, T).unwrap().is_empty());
        assert_eq!(
            p.report("a", 0, true, json!(1), 2, T),
            Err(Refused::AlreadyReported(0, "a".into()))
        );
        assert_eq!(
            p.report("c", 0, true, json!(1), 2, T),
            Err(Refused::NotRecipient(0, "c".into()))
        );
        assert_eq!(p.outstanding("b"), [0]);
        assert_eq!(p.outstanding("a"), Vec::<usize>::new());
        let a = p.report("b", 0, true, json!(2), 3, T).unwrap();
        assert_eq!(a, [Action::TaskDone { index: 0 }]);
        assert_eq!(p.tasks[0].result(), json!({"a": 1, "b": 2}));
        let a = p.report("c", 1, true, json!(3), 4, T).unwrap();
        assert!(a.contains(&Action::Finished));
        assert_eq!(p.status, PlanStatus::Completed);
        assert_eq!(p.completed_count(), 2);
    }

    #[test]
    fn a_task_past_its_deadline_fails_and_stale_deadlines_do_nothing() {
        let mut p = plan(Mode::Sequential, &[Some("a"), Some("b")], &[]);
        p.start(0, T).unwrap();
        assert!(p.timeout(0, T - 1, T).is_empty(), "not yet due");
        let a = p.timeout(0, T, T);
        assert!(a.contains(&Action::TaskDone { index: 0 }) && a.contains(&Action::Finished));
        assert_eq!(p.tasks[0].status, TaskStatus::Failed);
        assert!(p.tasks[0].result().as_str().unwrap().contains("timed out"));
        assert!(p.timeout(0, 2 * T, T).is_empty());
        let mut p = plan(Mode::Parallel, &[Some("a")], &[]);
        p.start(0, T).unwrap();
        p.report("a", 0, true, json!(1), 5, T).unwrap();
        assert!(p.timeout(0, T, T).is_empty(), "done before its deadline");
    }

    #[test]
    fn cancel_ends_a_pending_or_running_plan_only() {
        let mut p = plan(Mode::Parallel, &[Some("a")], &[]);
        p.cancel(3).unwrap();
        assert_eq!(p.status, PlanStatus::Cancelled);
        assert_eq!(p.start(4, T), Err(Refused::NotPending("cancelled")));
        assert_eq!(p.cancel(5), Err(Refused::Ended("cancelled")));
        let mut p = plan(Mode::Parallel, &[Some("a")], &[]);
        p.start(0, T).unwrap();
        p.cancel(1).unwrap();
        assert_eq!(
            p.report("a", 0, true, json!(1), 2, T),
            Err(Refused::Ended("cancelled"))
        );
        assert!(p.outstanding("a").is_empty());
        assert!(plan(Mode::Parallel, &[None], &[]).check().is_err());
        assert!(plan(Mode::Parallel, &[], &["a"]).check().is_err());
    }

    #[derive(Debug, Clone)]
    enum Input {
        Report {
            agent: usize,
            index: usize,
            ok: bool,
        },
        Timeout {
            index: usize,
            after: u64,
        },
        Cancel,
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            6 => (0..4usize, 0..5usize, proptest::bool::weighted(0.8))
                .prop_map(|(agent, index, ok)| Input::Report { agent, index, ok }),
            2 => (0..5usize, 0..3 * T).prop_map(|(index, after)| Input::Timeout { index, after }),
            1 => Just(Input::Cancel),
        ]
    }

    fn arb_plan() -> impl Strategy<Value = Plan> {
        let agents = ["a", "b", "c", "d"];
        (
            proptest::bool::ANY,
            proptest::collection::vec(proptest::option::of(0..4usize), 1..5),
            1..4usize,
        )
            .prop_map(move |(parallel, targets, n_agents)| {
                let t: Vec<Option<&str>> = targets.iter().map(|t| t.map(|i| agents[i])).collect();
                let mode = if parallel {
                    Mode::Parallel
                } else {
                    Mode::Sequential
                };
                plan(mode, &t, &agents[..n_agents])
            })
    }

    /// The plan's invariants after any input.
    fn check_invariants(p: &Plan, finished: usize) {
        let rank = |s: TaskStatus| match s {
            TaskStatus::Pending => 0,
            TaskStatus::Running => 1,
            _ => 2,
        };
        for t in &p.tasks {
            assert!(t.reports.len() <= t.recipients.len());
            assert!(t.reports.keys().all(|a| t.recipients.contains(a)));
            assert_eq!(t.started_ms.is_some(), rank(t.status) >= 1, "{t:?}");
            assert_eq!(t.completed_ms.is_some(), rank(t.status) == 2, "{t:?}");
            if let (Some(s), Some(c)) = (t.started_ms, t.completed_ms) {
                assert!(s <= c);
            }
        }
        if p.mode == Mode::Sequential {
            let running = p
                .tasks
                .iter()
                .filter(|t| t.status == TaskStatus::Running)
                .count();
            assert!(running <= 1);
            // Tasks run in order: no started task after a pending one, and none after a
            // failed one.
            let started: Vec<bool> = p.tasks.iter().map(|t| t.started_ms.is_some()).collect();
            assert!(started.windows(2).all(|w| w[0] || !w[1]), "{started:?}");
            if let Some(f) = p.tasks.iter().position(|t| t.status == TaskStatus::Failed) {
                assert!(
                    p.tasks[f + 1..]
                        .iter()
                        .all(|t| t.status == TaskStatus::Pending)
                );
                if p.status != PlanStatus::Cancelled {
                    assert_eq!(p.status, PlanStatus::Failed);
                }
            }
        }
        let all_done = p.tasks.iter().all(|t| rank(t.status) == 2);
        if p.status == PlanStatus::Completed {
            assert!(p.tasks.iter().all(|t| t.status == TaskStatus::Completed));
        }
        if p.status == PlanStatus::Running && p.mode == Mode::Parallel {
            assert!(!all_done);
        }
        assert!(finished <= 1, "Finished is announced once");
        assert_eq!(
            finished == 1,
            matches!(p.status, PlanStatus::Completed | PlanStatus::Failed)
        );
    }

    proptest! {
        #[test]
        fn any_sequence_of_inputs_keeps_the_invariants(
            mut p in arb_plan(),
            inputs in proptest::collection::vec(input(), 0..40),
        ) {
            let agents = ["a", "b", "c", "d"];
            let mut now = 0;
            let mut finished = 0;
            let mut sent: std::collections::BTreeSet<(usize, String)> = Default::default();
            let mut counted: std::collections::BTreeSet<(usize, String)> = Default::default();
            for a in p.start(now, T).unwrap() {
                if let Action::Send { index, agent } = a {
                    prop_assert!(sent.insert((index, agent)), "a task is sent once per agent");
                }
            }
            for i in inputs {
                now += 7;
                let before = p.clone();
                let actions = match i {
                    Input::Report { agent, index, ok } => {
                        let agent = agents[agent];
                        match p.report(agent, index, ok, json!(now), now, T) {
                            Ok(a) => {
                                prop_assert!(counted.insert((index, agent.to_owned())),
                                    "a report counts once per task and agent");
                                prop_assert!(sent.contains(&(index, agent.to_owned())),
                                    "only from an agent the task was sent to");
                                a
                            }
                            Err(_) => {
                                prop_assert_eq!(&p, &before, "a refused input changes nothing");
                                Vec::new()
                            }
                        }
                    }
                    Input::Timeout { index, after } => {
                        now += after;
                        p.timeout(index, now, T)
                    }
                    Input::Cancel => {
                        let _ = p.cancel(now);
                        Vec::new()
                    }
                };
                for a in actions {
                    match a {
                        Action::Send { index, agent } => {
                            prop_assert!(sent.insert((index, agent)));
                        }
                        Action::Finished => finished += 1,
                        _ => {}
                    }
                }
                check_invariants(&p, finished);
                // A plan survives a restart: saved and read back, it is the same plan.
                let back: Plan = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
                prop_assert_eq!(&back, &p);
            }
        }
    }
}
