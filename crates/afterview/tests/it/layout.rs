//! The code's shape, checked: no import cycle between the top-level modules of any crate, and
//! no function outside tests longer than [`MAX_FN_LINES`]. These read the sources; nothing is
//! built or run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FN_LINES: usize = 80;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without its `#[cfg(test)]` tail and without comment lines.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Names that follow `crate::` in `text`, including those in `crate::{a, b::c}` groups.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in text.split("crate::").skip(1) {
        let group = part
            .strip_prefix('{')
            .map(|g| g.split('}').next().unwrap_or_default());
        let heads: Vec<&str> = match group {
            Some(g) => g.split(',').map(str::trim).collect(),
            None => vec![part],
        };
        for h in heads {
            let name: String = h
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// A crate's top-level modules and the ones each refers to.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            let mut v = vec![];
            rust_files(&p, &mut v);
            files.insert(name, v);
        } else if p.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main" {
            files.insert(name, vec![p]);
        }
    }
    let names: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(m, paths)| {
            let refs = paths
                .iter()
                .flat_map(|p| crate_refs(&code(p)))
                .filter(|r| r != m && names.contains(r))
                .collect();
            (m.clone(), refs)
        })
        .collect()
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        m: &str,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_owned(), 1);
        path.push(m.to_owned());
        for n in &g[m] {
            match state.get(n) {
                Some(1) => {
                    let at = path.iter().position(|p| p == n).unwrap();
                    let mut cycle = path[at..].to_vec();
                    cycle.push(n.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(g, n, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(m.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if !state.contains_key(m)
            && let Some(c) = visit(g, m, &mut state, &mut vec![])
        {
            return Some(c);
        }
    }
    None
}

fn crates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("src").is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    for krate in crates() {
        let g = module_graph(&krate.join("src"));
        assert!(
            find_cycle(&g).is_none(),
            "{}: modules depend on each other in a cycle: {:?}",
            krate.display(),
            find_cycle(&g).unwrap()
        );
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), BTreeSet::from([(*v).to_owned()])))
        .collect();
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    assert_eq!(
        crate_refs("use crate::{a::X, b};\nlet _ = crate::c::f();"),
        BTreeSet::from(["a".into(), "b".into(), "c".into()])
    );
}

/// `(name, lines)` of every function (braces counted) in `text`, tests excluded.
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = vec![];
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let sig = [
            "pub ",
            "pub(crate) ",
            "pub(super) ",
            "async ",
            "const ",
            "unsafe ",
        ]
        .iter()
        .fold(t, |t, p| t.strip_prefix(p).unwrap_or(t));
        let sig = sig.strip_prefix("async ").unwrap_or(sig);
        let Some(rest) = sig.strip_prefix("fn ") else {
            i += 1;
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut opened, mut j) = (0i32, false, i);
        while j < lines.len() {
            for c in lines[j].chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth <= 0) || (!opened && lines[j].trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        out.push((name, j - i + 1));
        i = j + 1;
    }
    out
}

#[test]
fn functions_stay_short() {
    let mut over = vec![];
    for krate in crates() {
        let mut files = vec![];
        rust_files(&krate.join("src"), &mut files);
        for f in files {
            let rel = f
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if rel.ends_with("testsuite.rs") || rel.ends_with("testing.rs") {
                continue;
            }
            for (name, n) in functions(&code(&f)) {
                if n > MAX_FN_LINES {
                    over.push(format!(
                        "{rel}: fn {name} has {n} lines (limit {MAX_FN_LINES})"
                    ));
                }
            }
        }
    }
    assert!(
        over.is_empty(),
        "split these functions:\n{}",
        over.join("\n")
    );
}

#[test]
fn the_function_measure_counts_signature_to_closing_brace() {
    let body = "    x += 1;\n".repeat(88);
    let text = format!(
        "/// Doc.\npub(crate) async fn long(\n    a: u8,\n) -> u8 {{\n{body}    a\n}}\n\nfn short() {{}}\n"
    );
    assert_eq!(
        functions(&text),
        [("long".to_owned(), 93), ("short".to_owned(), 1)]
    );
}
