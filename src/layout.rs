//! The check behind `lib.rs`'s "imports point down": no two modules import each other, at
//! the top level (`proxy` → `upstream` → `item`) and among the children of one module (each
//! with everything below it; a module's own file and its children are one unit). Paths are read from the source text:
//! `crate::`, `super::` and `self::` paths, a module's relative paths to its own children,
//! and `use` trees; a name a module re-exports (`pub use child::Name`) counts as the child's.
//! Test modules (`tests.rs`, inline `#[cfg(test)] mod`) are leaves and are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path below the crate root (`["listener", "clock"]`); the root is `[]`.
type ModPath = Vec<String>;

struct Source {
    /// Comments, strings and inline test modules removed.
    code: String,
}

fn sources(dir: &Path, prefix: &ModPath, out: &mut BTreeMap<ModPath, Source>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 file name")
            .to_string();
        if path.is_dir() {
            if name != "tests" {
                let mut inner = prefix.clone();
                inner.push(name);
                sources(&path, &inner, out);
            }
            continue;
        }
        let Some(stem) = name.strip_suffix(".rs") else {
            continue;
        };
        if stem == "tests" || stem == "main" || (prefix.is_empty() && stem == "layout") {
            continue;
        }
        let mut module = prefix.clone();
        if stem != "mod" && !(prefix.is_empty() && stem == "lib") {
            module.push(stem.to_string());
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        out.insert(module, Source { code: strip(&text) });
    }
}

/// The text without comments, string literals and `#[cfg(test)] mod NAME { ... }` blocks.
fn strip(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |end| end + 2);
        } else if let Some(raw) = rest.strip_prefix("r#\"") {
            i += 3 + raw.find("\"#").map_or(raw.len(), |end| end + 2);
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => break,
                    _ => j += 1,
                }
            }
            i += (j + 1).min(rest.len());
        } else if let Some(after) = rest.strip_prefix("#[cfg(test)]") {
            // Skip the attribute and, when it is on an inline module, the module's block.
            let trimmed = after.trim_start();
            if trimmed.starts_with("mod ")
                && trimmed
                    .find('{')
                    .is_some_and(|b| trimmed.find(';').is_none_or(|semi| b < semi))
            {
                let open = rest.len() - trimmed.len() + trimmed.find('{').unwrap_or(0);
                let mut depth = 0;
                let mut j = open;
                for (k, c) in rest[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                j = open + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                i += j;
            } else {
                i += "#[cfg(test)]".len();
            }
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path that starts at `at`: `a::b::c`, `a::{b, c::d}` trees expanded, `a::*` kept.
fn paths_at(code: &str, at: usize) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut pos = at;
    tree(code, &mut pos, Vec::new(), &mut out);
    out
}

fn tree(code: &str, pos: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        skip_space(code, pos);
        let rest = &code[*pos..];
        if rest.starts_with('{') {
            *pos += 1;
            loop {
                skip_space(code, pos);
                if code[*pos..].starts_with('}') {
                    *pos += 1;
                    return;
                }
                tree(code, pos, path.clone(), out);
                skip_space(code, pos);
                if code[*pos..].starts_with(',') {
                    *pos += 1;
                } else if code[*pos..].starts_with('}') {
                    *pos += 1;
                    return;
                } else {
                    return;
                }
            }
        }
        if rest.starts_with('*') {
            *pos += 1;
            path.push("*".to_string());
            out.push(path);
            return;
        }
        let len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if len == 0 {
            if !path.is_empty() {
                out.push(path);
            }
            return;
        }
        path.push(rest[..len].to_string());
        *pos += len;
        if code[*pos..].starts_with("::") {
            *pos += 2;
        } else {
            // `as NAME` renames only the binding.
            skip_space(code, pos);
            if code[*pos..].starts_with("as ") {
                *pos += 3;
                skip_space(code, pos);
                let rest = &code[*pos..];
                *pos += rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            }
            out.push(path);
            return;
        }
    }
}

fn skip_space(code: &str, pos: &mut usize) {
    while code[*pos..].starts_with(|c: char| c.is_whitespace()) {
        *pos += 1;
    }
}

/// The module a path written in `from` names, and the item it names there (if any).
fn resolve(
    from: &ModPath,
    path: &[String],
    modules: &BTreeMap<ModPath, Source>,
    exports: &BTreeMap<(ModPath, String), Vec<String>>,
    depth: usize,
) -> Option<ModPath> {
    let mut module: ModPath = Vec::new();
    let mut segments = path.iter().peekable();
    match segments.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segments.next();
        }
        Some("self") => {
            segments.next();
            module = from.clone();
        }
        Some("super") => {
            module = from.clone();
            while segments.peek().map(|s| s.as_str()) == Some("super") {
                segments.next();
                module.pop()?;
            }
        }
        _ => module = from.clone(),
    }
    for segment in segments {
        let mut child = module.clone();
        child.push(segment.clone());
        if modules.contains_key(&child) {
            module = child;
            continue;
        }
        // An item of `module`: a re-export names the module it comes from.
        if depth < 8 {
            if let Some(source) = exports.get(&(module.clone(), segment.clone())) {
                return resolve(&module, source, modules, exports, depth + 1);
            }
        }
        break;
    }
    Some(module)
}

/// Each module's dependencies: the modules its paths name, as (from, to, the path's text).
fn edges(modules: &BTreeMap<ModPath, Source>) -> Vec<(ModPath, ModPath, String)> {
    // Re-exports first: `pub use a::b::Name;` and `pub use a::{Name, Other};`.
    let mut exports = BTreeMap::new();
    for (module, source) in modules {
        for keyword in ["pub use ", "pub(crate) use "] {
            for (at, _) in source.code.match_indices(keyword) {
                for path in paths_at(&source.code, at + keyword.len()) {
                    if let Some(name) = path.last().filter(|n| n.as_str() != "*") {
                        exports.insert((module.clone(), name.clone()), path.clone());
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for (module, source) in modules {
        let code = &source.code;
        let children: BTreeSet<String> = modules
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .filter_map(|m| m.last().cloned())
            .collect();
        let mut starts = Vec::new();
        for root in ["crate::", "super::", "self::"] {
            starts.extend(code.match_indices(root).map(|(at, _)| at));
        }
        for child in &children {
            starts.extend(code.match_indices(&format!("{child}::")).map(|(at, _)| at));
        }
        for at in starts {
            let boundary = code[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !is_ident(c) && c != ':');
            if !boundary {
                continue;
            }
            // A re-export is the child's own name, not a dependency of this file on it.
            let line_start = code[..at].rfind(['\n', ';', '{']).map_or(0, |p| p + 1);
            let line = code[line_start..at].trim_start();
            if line.starts_with("pub use") || line.starts_with("pub(crate) use") {
                continue;
            }
            for path in paths_at(code, at) {
                if let Some(target) = resolve(module, &path, modules, &exports, 0) {
                    if &target != module {
                        out.push((module.clone(), target, path.join("::")));
                    }
                }
            }
        }
    }
    out
}

/// The groups of nodes that reach each other through `links` (a node to the nodes it
/// depends on): every group of more than one node is a cycle. Tarjan's algorithm.
fn tangles(links: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        links: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        groups: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.links.get(node).into_iter().flatten() {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut group = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    group.push(member.to_string());
                    if member == node {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.groups.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        links,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        groups: Vec::new(),
    };
    for node in links.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.groups
}

/// Every cycle the rule forbids, each as a readable line with the paths that make it.
fn cycles() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    sources(&src, &Vec::new(), &mut modules);
    let edges = edges(&modules);
    let mut found = Vec::new();
    // Levels: the crate's top-level modules, then the files inside each module with files.
    let parents: BTreeSet<ModPath> = modules
        .keys()
        .filter(|m| !m.is_empty())
        .map(|m| m[..m.len() - 1].to_vec())
        .collect();
    for parent in parents {
        // A node per child of `parent`, with everything below it. `parent`'s own file is
        // no node: its children are its parts (a child may use its parent's types, and the
        // parent uses its children), and siblings must not lean on each other both ways.
        let node = |m: &ModPath| -> Option<String> {
            if !m.starts_with(&parent) {
                return None;
            }
            m.get(parent.len()).cloned()
        };
        let mut links: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut why: BTreeMap<(String, String), String> = BTreeMap::new();
        for (from, to, path) in &edges {
            let (Some(a), Some(b)) = (node(from), node(to)) else {
                continue;
            };
            if a != b {
                links.entry(a.clone()).or_default().insert(b.clone());
                why.entry((a, b))
                    .or_insert_with(|| format!("{} uses {path}", from.join("::")));
            }
        }
        for group in tangles(&links) {
            let steps: Vec<&String> = why
                .iter()
                .filter(|((a, b), _)| group.contains(a) && group.contains(b))
                .map(|(_, path)| path)
                .collect();
            let level = if parent.is_empty() {
                "the crate".to_string()
            } else {
                parent.join("::")
            };
            found.push(format!(
                "in {level}: {} import each other ({})",
                group.join(", "),
                steps
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
    found
}

/// lib.rs says imports point down: a cycle means a type lives in the wrong module.
#[test]
fn no_module_imports_one_that_imports_it() {
    let found = cycles();
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn paths_and_use_trees_are_read() {
    let code = "use crate::{a::B, c::{d, E as F}, g};";
    let at = code.find("crate::").expect("path");
    let paths: Vec<String> = paths_at(code, at).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        ["crate::a::B", "crate::c::d", "crate::c::E", "crate::g"]
    );
    let stripped =
        strip("a // crate::x\n\"crate::y\" b\n#[cfg(test)]\nmod tests { use super::*; }\nc");
    assert!(!stripped.contains("crate::") && !stripped.contains("super::"));
    assert!(stripped.contains('a') && stripped.contains('b') && stripped.contains('c'));
}
