//! The OpenAI chat-completions wire format (`POST {base}/chat/completions`), as spoken by
//! OpenAI and by the servers HPC sites run models with (vLLM, llama.cpp server, Ollama, SGLang).
//!
//! Pure functions: a [`ThinkRequest`] becomes a request body, a response body becomes a
//! [`ThinkOutput`]. The transport lives in [`super::transport`].

use super::config::ModelConfig;
use super::{FunctionCall, ThinkOutput, ThinkRequest, ThinkingLevel};
use serde_json::{Map, Value, json};

/// Where to send the request.
pub fn url(m: &ModelConfig) -> String {
    format!("{}/chat/completions", m.base_url)
}

/// Request headers besides `Content-Type`.
pub fn headers(m: &ModelConfig) -> Vec<(String, String)> {
    match &m.api_key {
        Some(k) => vec![(
            "Authorization".to_string(),
            format!("Bearer {}", k.expose()),
        )],
        None => vec![],
    }
}

/// The JSON body for `req`.
pub fn body(m: &ModelConfig, req: &ThinkRequest) -> Value {
    let mut messages = Vec::new();
    if let Some(sys) = &req.system_instruction {
        messages.push(json!({"role": "system", "content": sys}));
    }
    let user = match &req.image {
        None => json!({"role": "user", "content": req.prompt}),
        Some(img) => {
            let mut parts = Vec::new();
            if !req.prompt.is_empty() {
                parts.push(json!({"type": "text", "text": req.prompt}));
            }
            parts.push(json!({
                "type": "image_url",
                "image_url": {"url": format!("data:{};base64,{}", img.mime_type, img.data)},
            }));
            json!({"role": "user", "content": parts})
        }
    };
    messages.push(user);
    let mut b = Map::new();
    b.insert("model".into(), m.model.clone().into());
    b.insert("messages".into(), Value::Array(messages));
    if let Some(t) = req.temperature {
        b.insert("temperature".into(), t.into());
    }
    if let Some(n) = req.max_tokens {
        b.insert(m.max_tokens_field.clone(), n.into());
    }
    if let Some(level) = &req.thinking_level {
        // Chat completions have one knob for this: the reasoning effort.
        let effort = match level {
            ThinkingLevel::Named(s) => s.clone(),
            ThinkingLevel::Budget(0) => "minimal".into(),
            ThinkingLevel::Budget(n) if *n <= 2048 => "low".into(),
            ThinkingLevel::Budget(n) if *n <= 8192 => "medium".into(),
            ThinkingLevel::Budget(_) => "high".into(),
        };
        b.insert("reasoning_effort".into(), effort.into());
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|f| {
                let mut func = Map::new();
                func.insert("name".into(), f.name.clone().into());
                if let Some(d) = &f.description {
                    func.insert("description".into(), d.clone().into());
                }
                func.insert(
                    "parameters".into(),
                    f.parameters
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                );
                json!({"type": "function", "function": Value::Object(func)})
            })
            .collect();
        b.insert("tools".into(), Value::Array(tools));
    }
    Value::Object(b)
}

/// Reads a chat-completions response.
pub fn parse(m: &ModelConfig, body: &[u8]) -> Result<ThinkOutput, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the backend's answer is not JSON: {e}"))?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(format!(
            "the backend reported an error: {}",
            error_text(err)
        ));
    }
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or("the backend's answer has no choices")?;
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let content = match msg.get("content") {
        Some(Value::String(s)) => s.clone(),
        // Some servers return content as a list of parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    };
    let mut function_calls = Vec::new();
    if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
        for c in calls {
            let f = c.get("function").unwrap_or(&Value::Null);
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                continue;
            };
            let arguments = match f.get("arguments") {
                Some(Value::String(s)) => {
                    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
                }
                Some(other) => other.clone(),
                None => json!({}),
            };
            function_calls.push(FunctionCall {
                id: c.get("id").and_then(Value::as_str).map(str::to_string),
                name: name.to_string(),
                arguments,
            });
        }
    }
    let usage = v.get("usage").unwrap_or(&Value::Null);
    let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (prompt_tokens, completion_tokens) = (n("prompt_tokens"), n("completion_tokens"));
    let total_tokens = usage
        .get("total_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(prompt_tokens + completion_tokens);
    Ok(ThinkOutput {
        content,
        function_calls,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(&m.model)
            .to_string(),
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// The message in an OpenAI-style (or Gemini-style) error object.
pub fn error_text(err: &Value) -> String {
    match err {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::{Provider, Secret};
    use super::super::{FunctionDecl, Image};
    use super::*;
    use std::time::Duration;

    fn model() -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            provider: Provider::OpenAi,
            base_url: "http://h/v1".into(),
            model: "llama".into(),
            api_key: Some(Secret::new("sk")),
            concurrency: 1,
            timeout: Duration::from_secs(1),
            max_tokens_field: "max_tokens".into(),
            ca: None,
        }
    }

    #[test]
    fn builds_the_wire_format() {
        let req = ThinkRequest {
            prompt: "hi".into(),
            system_instruction: Some("be brief".into()),
            image: Some(Image {
                mime_type: "image/png".into(),
                data: "AAAA".into(),
            }),
            temperature: Some(0.5),
            max_tokens: Some(7),
            thinking_level: Some(ThinkingLevel::Named("low".into())),
            tools: vec![FunctionDecl {
                name: "f".into(),
                description: None,
                parameters: None,
            }],
        };
        let b = body(&model(), &req);
        assert_eq!(
            b["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(b["messages"][1]["content"][0]["text"], "hi");
        assert_eq!(
            b["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["reasoning_effort"], "low");
        assert_eq!(b["tools"][0]["function"]["name"], "f");
        assert_eq!(headers(&model())[0].1, "Bearer sk");
    }

    #[test]
    fn parses_answers_and_tool_calls() {
        let out = parse(
            &model(),
            br#"{"model":"llama-x","choices":[{"message":{"content":null,"tool_calls":[
                {"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
                "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
        )
        .unwrap();
        assert_eq!(out.content, "");
        assert_eq!(out.function_calls[0].arguments, json!({"a": 1}));
        assert_eq!(out.total_tokens, 7);
        assert_eq!(out.model, "llama-x");
        assert!(parse(&model(), b"{}").is_err());
        assert!(
            parse(&model(), br#"{"error":{"message":"boom"}}"#)
                .unwrap_err()
                .contains("boom")
        );
    }
}
