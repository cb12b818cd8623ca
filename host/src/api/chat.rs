//! The chat template. GPT-2 has none of its own, so locus renders a conversation as plain
//! labelled turns, a format base models continue naturally:
//!
//! ```text
//! System: You are terse.
//!
//! User: Hi!
//!
//! Assistant: Hello.
//!
//! User: What is 2+2?
//!
//! Assistant:
//! ```
//!
//! Each message is `<Role>: <content>` followed by a blank line (`developer` renders as
//! `System`, `tool` as `Tool`); the prompt ends with `Assistant:` for the model to continue,
//! and generation stops before the model starts a new `User:` turn. A conversation's next
//! turn renders to the previous prompt plus what was said since, so multi-turn requests
//! share a prefix and are routed and cached as one.

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;

/// Stop sequences every chat request gets, so that the model answers one turn.
pub const STOPS: &[&str] = &["\n\nUser:"];

/// One message of `messages`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, or a list of `{"type": "text", "text": ...}` parts.
    #[serde(default)]
    pub content: Option<Value>,
}

/// Renders `messages` into the prompt (see the module docs).
pub fn render(messages: &[ChatMessage]) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` is empty"));
    }
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        let label = match m.role.as_str() {
            "system" | "developer" => "System",
            "user" => "User",
            "assistant" => "Assistant",
            "tool" => "Tool",
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "unknown role `{other}`: use system, developer, user, assistant or tool"
                    ),
                ));
            }
        };
        out.push_str(label);
        out.push(':');
        let content = text_of(m.content.as_ref(), i)?;
        if !content.is_empty() {
            out.push(' ');
            out.push_str(&content);
        }
        out.push_str("\n\n");
    }
    out.push_str("Assistant:");
    Ok(out)
}

fn text_of(content: Option<&Value>, i: usize) -> Result<String, ApiError> {
    let param = || format!("messages[{i}].content");
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str))
                {
                    (Some("text"), Some(t)) => s.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::unsupported(
                            param(),
                            format!(
                                "content part {:?} is not supported: only text parts",
                                kind.unwrap_or("?")
                            ),
                        ));
                    }
                }
            }
            Ok(s)
        }
        Some(_) => {
            Err(ApiError::invalid(param(), "content must be a string or a list of text parts"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: Value) -> ChatMessage {
        ChatMessage { role: role.into(), content: Some(content) }
    }

    #[test]
    fn renders_turns_and_the_next_turn_extends_the_last_prompt() {
        let mut conv = vec![msg("system", "Be terse.".into()), msg("user", "Hi".into())];
        let first = render(&conv).unwrap();
        assert_eq!(first, "System: Be terse.\n\nUser: Hi\n\nAssistant:");
        conv.push(msg("assistant", "Hello.".into()));
        conv.push(msg("user", serde_json::json!([{"type": "text", "text": "2+2?"}])));
        let second = render(&conv).unwrap();
        assert!(second.starts_with(first.as_str()), "{second:?}");
        assert!(second.ends_with("Assistant: Hello.\n\nUser: 2+2?\n\nAssistant:"));
    }

    #[test]
    fn bad_messages_name_the_field() {
        assert_eq!(render(&[]).unwrap_err().param.as_deref(), Some("messages"));
        let e = render(&[msg("user", "a".into()), msg("robot", "b".into())]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[1].role"));
        let img = serde_json::json!([{"type": "image_url", "image_url": {"url": "x"}}]);
        let e = render(&[msg("user", img)]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        assert_eq!(e.status.as_u16(), 400);
    }
}
