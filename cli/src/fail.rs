//! Failures of the `shmkv` command: exit code, machine-readable kind, the
//! map concerned, the message; text or JSON on stderr.

use serde_json::Value;
use shmkv::Error;

/// A failure: exit code, a machine-readable kind, the map if one is
/// concerned, and the one-line message.
pub(crate) struct Fail {
    pub(crate) code: u8,
    pub(crate) kind: &'static str,
    pub(crate) map: Option<String>,
    pub(crate) msg: String,
    /// What to do about it (shown after the message; `"hint"` in JSON).
    pub(crate) hint: Option<String>,
}

/// Exit code 1 with this kind and message, no map.
pub(crate) fn fail(kind: &'static str, msg: String) -> Fail {
    Fail {
        code: 1,
        kind,
        map: None,
        msg,
        hint: None,
    }
}

impl Fail {
    /// A library error about map `name`.
    pub(crate) fn map(name: &str, e: Error) -> Fail {
        let msg = e.to_string();
        let msg = if msg.contains(&format!("{name:?}")) {
            msg
        } else {
            format!("map {name:?}: {msg}")
        };
        Fail {
            code: 1,
            kind: error_kind(&e),
            map: Some(name.to_string()),
            msg,
            hint: None,
        }
    }

    /// A missing map's failure says how to create it.
    pub(crate) fn create_hint(mut self, cli: &crate::Cli) -> Fail {
        if self.kind == "not_found" {
            if let Some(name) = &self.map {
                let key = cli
                    .sysv_key
                    .map(|k| format!("--sysv-key {k} "))
                    .unwrap_or_default();
                self.hint = Some(format!(
                    "create it with `shmkv {key}create {}`",
                    shell_word(name)
                ));
            }
        }
        self
    }

    /// This failure about map `name`.
    pub(crate) fn about(mut self, name: &str) -> Fail {
        self.map = Some(name.to_string());
        self
    }

    /// This failure with exit code `code`.
    pub(crate) fn code(mut self, code: u8) -> Fail {
        self.code = code;
        self
    }

    /// Prints the failure on stderr: one line of text, or one JSON object.
    pub(crate) fn report(&self, json: bool) {
        if json {
            let mut o = serde_json::Map::new();
            o.insert("error".into(), self.msg.clone().into());
            o.insert("kind".into(), self.kind.into());
            o.insert("exit_code".into(), self.code.into());
            if let Some(m) = &self.map {
                o.insert("map".into(), m.clone().into());
            }
            if let Some(h) = &self.hint {
                o.insert("hint".into(), h.clone().into());
            }
            eprintln!("{}", Value::Object(o));
        } else if let Some(h) = &self.hint {
            eprintln!("shmkv: {} ({h})", self.msg);
        } else {
            eprintln!("shmkv: {}", self.msg);
        }
    }
}

/// `s` as one shell word: as it is when it has no special characters,
/// else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The `kind` of a library error in JSON errors.
pub(crate) fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::NotFound { .. } => "not_found",
        Error::AlreadyExists { .. } => "already_exists",
        Error::PermissionDenied { .. } => "permission_denied",
        Error::InvalidSize(_) => "invalid_size",
        Error::InvalidName(_) => "invalid_name",
        Error::InvalidOption(_) => "invalid_option",
        Error::Ftok { .. } => "ftok",
        Error::KeyTooLarge { .. } => "key_too_large",
        Error::ValueTooLarge { .. } => "value_too_large",
        Error::Full { .. } => "full",
        Error::HugePagesUnavailable { .. } => "huge_pages_unavailable",
        Error::LockTimeout { .. } => "lock_timeout",
        Error::Busy { .. } => "busy",
        Error::TypedMap { .. } => "typed_map",
        Error::Incompatible(_) => "incompatible",
        Error::Corrupted(_) => "corrupted",
        Error::NameMismatch { .. } => "name_mismatch",
        Error::ReadOnly => "read_only",
        Error::NestedWrite => "nested_write",
        Error::Value(_) => "value",
        Error::KeyInUse { .. } => "key_in_use",
        Error::Os { .. } => "os",
        Error::ReservedKey { .. } => "reserved_key",
        _ => "other",
    }
}

/// Asks `question [y/N]` on stderr and reads the answer from stdin: `y`,
/// `Y` or `yes` confirm. At EOF with `--json` the JSON error that follows
/// gets a line of its own.
pub(crate) fn confirm(question: &str, json: bool) -> Result<bool, Fail> {
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| fail("io", e.to_string()))?;
    if answer.is_empty() && json {
        eprintln!();
    }
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
