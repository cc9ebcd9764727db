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

/// Collects problems under a key path prefix.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, path: &[&str], message: impl Into<String>) {
        self.0.push(Problem {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
        });
    }
}
