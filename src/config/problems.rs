//! The problems validation finds: each with the key path it belongs to, collected for the
//! whole file so every one is reported at once.

/// One problem found while validating, with the key path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path segments, e.g. `["routes", "1", "max_items"]`.
    pub path: Vec<String>,
    pub message: String,
}

impl Problem {
    /// The key path in the `routes[1].max_items` form.
    pub fn dotted_path(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            if segment.parse::<usize>().is_ok() {
                out.push_str(&format!("[{segment}]"));
            } else {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(segment);
            }
        }
        out
    }
}

/// A key the file leaves out, and the value validation used in its place (`check --print`).
#[derive(Debug, Clone)]
pub struct Filled {
    /// Key path segments, as in `Problem`.
    pub path: Vec<String>,
    pub value: toml_edit::Value,
}

/// Collects problems under a key path prefix, and the defaults used for absent keys.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>, pub(super) Vec<Filled>);

impl Problems {
    /// Records that `path` was absent and `value` stands for it.
    pub(super) fn filled(&mut self, path: &[&str], value: impl Into<toml_edit::Value>) {
        self.1.push(Filled {
            path: path.iter().map(|s| s.to_string()).collect(),
            value: value.into(),
        });
    }

    pub(super) fn push(&mut self, path: &[&str], message: impl Into<String>) {
        self.0.push(Problem {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
        });
    }
}
