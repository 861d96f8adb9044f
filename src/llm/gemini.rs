//! The Gemini `generateContent` wire format (`POST {base}/models/{model}:generateContent`).
//!
//! Pure functions, like [`super::openai`]. The key travels in the `x-goog-api-key` header,
//! never in the URL, so it cannot end up in a log line that prints URLs.

use super::config::ModelConfig;
use super::{FunctionCall, ThinkOutput, ThinkRequest, ThinkingLevel};
use serde_json::{Map, Value, json};

/// Where to send the request.
pub fn url(m: &ModelConfig) -> String {
    format!("{}/models/{}:generateContent", m.base_url, m.model)
}

/// Request headers besides `Content-Type`.
pub fn headers(m: &ModelConfig) -> Vec<(String, String)> {
    match &m.api_key {
        Some(k) => vec![("x-goog-api-key".to_string(), k.expose().to_string())],
        None => vec![],
    }
}

/// Whether model id `id` takes `thinkingConfig.thinkingLevel` (Gemini 3 and later) rather
/// than `thinkingConfig.thinkingBudget` (Gemini 2.5, which refuses `thinkingLevel` with a 400).
/// Ids that name no version (aliases such as `gemini-flash-latest`, other model families) get
/// the budget, which Gemini 3 accepts too.
pub fn takes_thinking_level(id: &str) -> bool {
    let id = id.rsplit('/').next().unwrap_or(id);
    let Some(rest) = id.strip_prefix("gemini-") else {
        return false;
    };
    let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
    major.parse::<u32>().is_ok_and(|n| n >= 3)
}

/// Level names a budget-taking model understands.
pub const BUDGET_LEVELS: &str = "none, minimal, low, medium, high, dynamic";

/// The `thinkingBudget` for a level name on a model that takes budgets: `low`, `medium` and
/// `high` are the budgets Google's own OpenAI-compatible endpoint uses for `reasoning_effort`;
/// `none` turns thinking off (where the model allows it), `minimal` is the smallest budget
/// every 2.5 model accepts, `dynamic` (or `auto`) lets the model decide.
pub fn level_budget(name: &str) -> Option<i64> {
    Some(match name {
        "none" | "off" => 0,
        "minimal" => 512,
        "low" => 1024,
        "medium" => 8192,
        "high" => 24576,
        "dynamic" | "auto" => -1,
        _ => return None,
    })
}

/// The JSON body for `req` to model `m`; refuses a level name the model cannot take.
pub fn body(m: &ModelConfig, req: &ThinkRequest) -> Result<Value, String> {
    let mut parts = Vec::new();
    if !req.prompt.is_empty() || req.image.is_none() {
        parts.push(json!({"text": req.prompt}));
    }
    if let Some(img) = &req.image {
        parts.push(json!({"inlineData": {"mimeType": img.mime_type, "data": img.data}}));
    }
    let mut b = Map::new();
    b.insert("contents".into(), json!([{"role": "user", "parts": parts}]));
    if let Some(sys) = &req.system_instruction {
        b.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": sys}]}),
        );
    }
    let mut gen_cfg = Map::new();
    if let Some(t) = req.temperature {
        gen_cfg.insert("temperature".into(), t.into());
    }
    if let Some(n) = req.max_tokens {
        gen_cfg.insert("maxOutputTokens".into(), n.into());
    }
    match &req.thinking_level {
        Some(ThinkingLevel::Named(s)) if takes_thinking_level(&m.model) => {
            gen_cfg.insert("thinkingConfig".into(), json!({"thinkingLevel": s}));
        }
        Some(ThinkingLevel::Named(s)) => {
            let budget = level_budget(s).ok_or_else(|| {
                format!(
                    "thinking_level {s:?} is not a level {} takes (it takes a token budget, or \
                     one of: {BUDGET_LEVELS})",
                    m.model
                )
            })?;
            gen_cfg.insert("thinkingConfig".into(), json!({"thinkingBudget": budget}));
        }
        Some(ThinkingLevel::Budget(n)) => {
            gen_cfg.insert("thinkingConfig".into(), json!({"thinkingBudget": n}));
        }
        None => {}
    }
    if !gen_cfg.is_empty() {
        b.insert("generationConfig".into(), Value::Object(gen_cfg));
    }
    if !req.tools.is_empty() {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|f| {
                let mut d = Map::new();
                d.insert("name".into(), f.name.clone().into());
                if let Some(desc) = &f.description {
                    d.insert("description".into(), desc.clone().into());
                }
                if let Some(p) = &f.parameters {
                    d.insert("parameters".into(), p.clone());
                }
                Value::Object(d)
            })
            .collect();
        b.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    Ok(Value::Object(b))
}

/// Reads a `generateContent` response.
pub fn parse(m: &ModelConfig, body: &[u8]) -> Result<ThinkOutput, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the backend's answer is not JSON: {e}"))?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(format!(
            "the backend reported an error: {}",
            super::openai::error_text(err)
        ));
    }
    let Some(cand) = v
        .get("candidates")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    else {
        let reason = v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
            .unwrap_or("no candidates returned");
        return Err(format!("the backend returned no answer: {reason}"));
    };
    let mut content = String::new();
    let mut function_calls = Vec::new();
    for p in cand
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            content.push_str(t);
        }
        if let Some(fc) = p.get("functionCall")
            && let Some(name) = fc.get("name").and_then(Value::as_str)
        {
            function_calls.push(FunctionCall {
                id: fc.get("id").and_then(Value::as_str).map(str::to_string),
                name: name.to_string(),
                arguments: fc.get("args").cloned().unwrap_or_else(|| json!({})),
            });
        }
    }
    let usage = v.get("usageMetadata").unwrap_or(&Value::Null);
    let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    let prompt_tokens = n("promptTokenCount");
    let completion_tokens = n("candidatesTokenCount") + n("thoughtsTokenCount");
    let total_tokens = usage
        .get("totalTokenCount")
        .and_then(Value::as_u64)
        .unwrap_or(prompt_tokens + completion_tokens);
    Ok(ThinkOutput {
        content,
        function_calls,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        model: v
            .get("modelVersion")
            .and_then(Value::as_str)
            .unwrap_or(&m.model)
            .to_string(),
        finish_reason: cand
            .get("finishReason")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::super::config::{Provider, Secret};
    use super::super::{FunctionDecl, Image};
    use super::*;
    use std::time::Duration;

    fn model() -> ModelConfig {
        ModelConfig {
            name: "g".into(),
            provider: Provider::Gemini,
            base_url: "http://h/v1beta".into(),
            model: "gemini-x".into(),
            api_key: Some(Secret::new("gk")),
            concurrency: 1,
            timeout: Duration::from_secs(1),
            max_tokens_field: "maxOutputTokens".into(),
            ca: None,
        }
    }

    #[test]
    fn builds_the_wire_format() {
        let req = ThinkRequest {
            prompt: "hi".into(),
            system_instruction: Some("sys".into()),
            image: Some(Image {
                mime_type: "image/jpeg".into(),
                data: "AAAA".into(),
            }),
            temperature: Some(0.1),
            max_tokens: Some(9),
            thinking_level: Some(ThinkingLevel::Budget(128)),
            tools: vec![FunctionDecl {
                name: "f".into(),
                description: Some("d".into()),
                parameters: Some(json!({"type": "object"})),
            }],
        };
        let b = body(&model(), &req).unwrap();
        assert_eq!(b["contents"][0]["parts"][0]["text"], "hi");
        assert_eq!(
            b["contents"][0]["parts"][1]["inlineData"]["mimeType"],
            "image/jpeg"
        );
        assert_eq!(b["systemInstruction"]["parts"][0]["text"], "sys");
        assert_eq!(b["generationConfig"]["maxOutputTokens"], 9);
        assert_eq!(
            b["generationConfig"]["thinkingConfig"]["thinkingBudget"],
            128
        );
        assert_eq!(b["tools"][0]["functionDeclarations"][0]["name"], "f");
        assert_eq!(
            url(&model()),
            "http://h/v1beta/models/gemini-x:generateContent"
        );
        assert_eq!(headers(&model())[0].0, "x-goog-api-key");
    }

    #[test]
    fn thinking_levels_fit_the_model_generation() {
        let with = |id: &str, level: ThinkingLevel| {
            let m = ModelConfig {
                model: id.into(),
                ..model()
            };
            let req = ThinkRequest {
                prompt: "p".into(),
                system_instruction: None,
                image: None,
                temperature: None,
                max_tokens: None,
                thinking_level: Some(level),
                tools: vec![],
            };
            body(&m, &req).map(|b| b["generationConfig"]["thinkingConfig"].clone())
        };
        let named = |s: &str| ThinkingLevel::Named(s.into());
        // Gemini 2.5 takes budgets only: level names become budgets.
        for (level, budget) in [
            ("none", 0),
            ("minimal", 512),
            ("low", 1024),
            ("medium", 8192),
            ("high", 24576),
            ("dynamic", -1),
        ] {
            assert_eq!(
                with("gemini-2.5-flash", named(level)),
                Ok(json!({"thinkingBudget": budget})),
                "{level}"
            );
        }
        assert_eq!(
            with("models/gemini-2.5-pro", named("high")),
            Ok(json!({"thinkingBudget": 24576}))
        );
        let e = with("gemini-2.5-flash", named("turbo")).unwrap_err();
        assert!(
            e.contains("\"turbo\"") && e.contains("gemini-2.5-flash") && e.contains("medium"),
            "{e}"
        );
        // Unversioned aliases get the budget too (Gemini 3 accepts it as well).
        assert_eq!(
            with("gemini-flash-latest", named("low")),
            Ok(json!({"thinkingBudget": 1024}))
        );
        // Gemini 3 takes the level itself, whatever its name; a budget stays a budget.
        for id in [
            "gemini-3-pro-preview",
            "gemini-3.1-flash",
            "gemini-10-ultra",
        ] {
            assert_eq!(
                with(id, named("low")),
                Ok(json!({"thinkingLevel": "low"})),
                "{id}"
            );
        }
        assert_eq!(
            with("gemini-3-pro-preview", ThinkingLevel::Budget(2048)),
            Ok(json!({"thinkingBudget": 2048}))
        );
        assert!(!takes_thinking_level("gemma-3-27b-it"));
        assert!(!takes_thinking_level("gemini-"));
    }

    #[test]
    fn parses_answers() {
        let out = parse(
            &model(),
            br#"{"candidates":[{"content":{"parts":[{"text":"thinking","thought":true},
              {"text":"4"},{"functionCall":{"name":"f","args":{"x":2}}}]},"finishReason":"STOP"}],
              "usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":1,"totalTokenCount":9},
              "modelVersion":"gemini-x-001"}"#,
        )
        .unwrap();
        assert_eq!(out.content, "4");
        assert_eq!(out.function_calls[0].arguments, json!({"x": 2}));
        assert_eq!(out.total_tokens, 9);
        assert_eq!(out.model, "gemini-x-001");
        let blocked = parse(&model(), br#"{"promptFeedback":{"blockReason":"SAFETY"}}"#);
        assert!(blocked.unwrap_err().contains("SAFETY"));
    }
}
