//! The test harness (`tests/common`) keeps no helper that no test uses. Each test binary
//! compiles the harness and uses part of it, so the compiler's dead-code lint is off there;
//! this check stands in for it, over all the test files together.

use std::path::Path;

/// Names a harness file declares `pub`: functions, methods, types, constants and statics.
fn declared(text: &str) -> Vec<String> {
    let kinds = [
        "pub fn ",
        "pub async fn ",
        "pub struct ",
        "pub enum ",
        "pub const ",
        "pub static ",
        "pub type ",
    ];
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let rest = kinds.iter().find_map(|k| line.strip_prefix(k))?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Whether `word` occurs in `text` as a whole identifier.
fn occurrences(text: &str, word: &str) -> usize {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word)
        .filter(|(i, _)| {
            let before = text[..*i].chars().next_back();
            let after = text[i + word.len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
        .count()
}

fn rust_files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_harness_helper_is_used_by_a_test() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let harness = rust_files(&tests.join("common"));
    // Every test file: tests/*.rs and the modules of multi-file tests (tests/*/*.rs).
    let dirs = std::fs::read_dir(&tests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir());
    let all: String = std::iter::once(tests.clone())
        .chain(dirs)
        .flat_map(|d| rust_files(&d))
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join("\n");
    let mut unused = Vec::new();
    for (file, text) in &harness {
        for name in declared(text) {
            // The declaration itself is one occurrence; a use is any other.
            if occurrences(&all, &name) < 2 {
                unused.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        unused.is_empty(),
        "helpers of the test harness that nothing uses (remove them):\n{}",
        unused.join("\n")
    );
}

#[test]
fn the_check_sees_a_helper_nobody_calls() {
    let text = "pub fn used() {}\npub async fn lonely() {}\nfn caller() { used(); }";
    let declared = declared(text);
    assert_eq!(declared, ["used", "lonely"]);
    assert_eq!(occurrences(text, "used"), 2);
    assert_eq!(occurrences(text, "lonely"), 1);
    assert_eq!(occurrences("unused used_by", "used"), 0);
}
