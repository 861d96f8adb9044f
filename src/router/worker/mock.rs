//! `worker_mode = "mock"`: Codeswarm's mock worker, record for record and byte for byte. Each
//! `user` line is answered with six `codex_rpc` records (status active, turn started, the
//! final agent message, task complete, turn completed, status idle) whose reply text is
//! `Mock worker received prompt: ` and the prompt with its whitespace collapsed (cut to 177
//! characters and `...` when longer than 180).

use super::pyjson;
use serde::Serialize;

/// The reply text for a prompt.
pub fn reply(prompt: &str) -> String {
    // Python's str.split() also splits on the ASCII separators \x1c..\x1f.
    let words: Vec<&str> = prompt
        .split(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c))
        .filter(|w| !w.is_empty())
        .collect();
    let collapsed = words.join(" ");
    let cut = if collapsed.chars().count() > 180 {
        let mut s: String = collapsed.chars().take(177).collect();
        s.push_str("...");
        s
    } else {
        collapsed
    };
    format!("Mock worker received prompt: {cut}")
}

#[derive(Serialize)]
struct Record<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    job_id: &'a str,
    node_id: u32,
    injection_id: &'a str,
    payload: Rpc<P>,
}

#[derive(Serialize)]
struct Rpc<P: Serialize> {
    method: &'static str,
    params: P,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct StatusType {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct StatusParams {
    status: StatusType,
}

#[derive(Serialize)]
struct AgentMessage<'a> {
    phase: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct TaskComplete<'a> {
    last_agent_message: &'a str,
}

#[derive(Serialize)]
struct Msg<M: Serialize> {
    msg: M,
}

/// The records answering one prompt, as the lines to append to the outbox.
pub fn answer(job_id: &str, node_id: u32, injection_id: &str, prompt: &str) -> Vec<u8> {
    let r = reply(prompt);
    let mut out = Vec::with_capacity(1024 + 2 * r.len());
    let mut rec = |method: &'static str, params: &dyn erased::Params| {
        out.extend(params.line(job_id, node_id, injection_id, method));
    };
    rec(
        "thread/status/changed",
        &StatusParams {
            status: StatusType { kind: "active" },
        },
    );
    rec("turn/started", &Empty {});
    rec(
        "codex/event/agent_message",
        &Msg {
            msg: AgentMessage {
                phase: "final_answer",
                message: &r,
            },
        },
    );
    rec(
        "codex/event/task_complete",
        &Msg {
            msg: TaskComplete {
                last_agent_message: &r,
            },
        },
    );
    rec("turn/completed", &Empty {});
    rec(
        "thread/status/changed",
        &StatusParams {
            status: StatusType { kind: "idle" },
        },
    );
    out
}

/// Lets records with different parameter types go through one closure.
mod erased {
    use super::*;

    pub trait Params {
        fn line(
            &self,
            job_id: &str,
            node_id: u32,
            injection_id: &str,
            method: &'static str,
        ) -> Vec<u8>;
    }

    impl<P: Serialize> Params for P {
        fn line(
            &self,
            job_id: &str,
            node_id: u32,
            injection_id: &str,
            method: &'static str,
        ) -> Vec<u8> {
            pyjson::line(&Record {
                kind: "codex_rpc",
                job_id,
                node_id,
                injection_id,
                payload: Rpc {
                    method,
                    params: self,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_text_collapses_and_cuts_like_the_python_mock() {
        assert_eq!(
            reply("  hello \n\t world  "),
            "Mock worker received prompt: hello world"
        );
        let long = "x".repeat(181);
        let r = reply(&long);
        assert_eq!(
            r,
            format!("Mock worker received prompt: {}...", "x".repeat(177))
        );
        let exact = "y".repeat(180);
        assert_eq!(
            reply(&exact),
            format!("Mock worker received prompt: {exact}")
        );
        assert_eq!(reply("é\u{1c}ü"), "Mock worker received prompt: é ü");
    }

    #[test]
    fn six_records_in_python_json() {
        let text = String::from_utf8(answer("7", 1, "i", "hi")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[0],
            "{\"type\": \"codex_rpc\", \"job_id\": \"7\", \"node_id\": 1, \"injection_id\": \"i\", \
             \"payload\": {\"method\": \"thread/status/changed\", \"params\": {\"status\": {\"type\": \"active\"}}}}"
        );
        assert!(lines[2].ends_with(
            "\"params\": {\"msg\": {\"phase\": \"final_answer\", \"message\": \"Mock worker received prompt: hi\"}}}}"
        ));
        assert!(lines[4].contains("\"method\": \"turn/completed\", \"params\": {}"));
    }
}
