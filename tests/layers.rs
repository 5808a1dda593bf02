//! The modules form layers: each one uses only the modules listed before it in the
//! module map of `src/lib.rs`, so data flows one way (job → input → record / dispatch →
//! worker → command line) and no module imports one above it.

use std::{collections::BTreeMap, fs, path::Path};

/// The module map's order: the names in `//! - [`name`]:` lines of `src/lib.rs`.
fn layer_order(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|l| l.strip_prefix("//! - [`"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

/// Every `crate::<module>` a file names (code and doc links alike), and every module
/// named in a `use crate::{…}` group.
fn uses(text: &str, modules: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut end = group.len();
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = j;
                        break;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            let group = &group[..end];
            found.extend(
                modules
                    .iter()
                    .filter(|m| {
                        group
                            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                            .any(|part| part == m.as_str() || part.starts_with(&format!("{m}::")))
                    })
                    .cloned(),
            );
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) {
                found.push(name);
            }
        }
    }
    found
}

fn files_of(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_of(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_uses_one_listed_after_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = layer_order(&fs::read_to_string(src.join("lib.rs")).unwrap());
    assert!(
        order.len() >= 10,
        "the module map of lib.rs lists {order:?}"
    );
    let mut files = Vec::new();
    files_of(&src, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let module = relative
            .trim_end_matches(".rs")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let Some(level) = order.iter().position(|m| *m == module) else {
            assert!(
                ["lib", "main"].contains(&module.as_str()),
                "src/{relative}: module `{module}` is missing from the module map of lib.rs"
            );
            continue;
        };
        for used in uses(&fs::read_to_string(&file).unwrap(), &order) {
            if order.iter().position(|m| *m == used).unwrap() > level {
                wrong
                    .entry(format!("src/{relative} ({module})"))
                    .or_default()
                    .push(used);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "modules using one listed after them: {wrong:?}"
    );
}

#[test]
fn the_check_sees_a_use_of_a_higher_module() {
    let order: Vec<String> = ["job", "db", "worker"].map(String::from).to_vec();
    assert_eq!(
        uses("use crate::{db::Record, worker::Worker};", &order),
        ["db", "worker"]
    );
    assert_eq!(uses("let x = crate::worker::run();", &order), ["worker"]);
    assert!(uses("use crate::install_crypto_provider;", &order).is_empty());
}
