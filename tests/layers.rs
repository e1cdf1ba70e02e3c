//! The layering check (`scripts/check-layers.py`): keyward's own tree passes it, and it fails
//! on each kind of break it exists to catch, built as a small crate in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

use std::path::Path;
use std::process::Command;

fn check(root: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/check-layers.py"
        ))
        .arg(root)
        .output()
        .expect("python3 runs the layering check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A one-crate tree named `keyward` with the given source files.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"keyward\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn keyward_has_no_upward_dependency_and_no_module_circle() {
    let (ok, text) = check(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(ok, "{text}");
}

#[test]
fn two_modules_importing_each_other_fail() {
    let dir = tree(&[
        ("src/lib.rs", "pub mod a;\npub mod b;\n"),
        ("src/a.rs", "use crate::b::B;\npub struct A(pub B);\n"),
        ("src/b.rs", "pub struct B;\npub fn f(a: crate::a::A) {}\n"),
    ]);
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("circle: a, b"), "{text}");
    assert!(text.contains("src/b.rs:2: crate::a::A"), "{text}");
}

#[test]
fn a_child_and_its_parent_importing_each_other_fail() {
    // `super::`, a grouped `use`, and a path through a child module's name.
    let dir = tree(&[
        ("src/lib.rs", "pub mod api;\npub struct Shared;\n"),
        (
            "src/api/mod.rs",
            "pub mod keys;\npub struct Api;\nfn f() { keys::list(); }\n",
        ),
        (
            "src/api/keys.rs",
            "use super::{Api, super::Shared};\npub fn list() {}\n",
        ),
    ]);
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("api, api::keys"), "{text}");
}

#[test]
fn test_code_comments_strings_and_re_exports_are_not_imports() {
    let dir = tree(&[
        (
            "src/lib.rs",
            "pub mod a;\npub mod b;\npub use b::B;\n#[cfg(test)]\nmod tests;\n",
        ),
        (
            "src/a.rs",
            "// crate::b::B would be a circle\npub struct A;\n\
             pub const S: &str = \"crate::b::B\";\n\
             #[cfg(test)]\nmod tests {\n    use crate::b::B;\n}\n",
        ),
        ("src/b.rs", "use crate::a::A;\npub struct B(pub A);\n"),
        ("src/tests.rs", "use crate::a::A;\nuse crate::b::B;\n"),
    ]);
    let (ok, text) = check(dir.path());
    assert!(ok, "{text}");
}

#[test]
fn super_inside_an_inline_module_names_its_own_file() {
    let dir = tree(&[
        ("src/lib.rs", "pub mod a;\npub mod b;\n"),
        (
            "src/a.rs",
            "pub struct Seconds;\nmod defaults {\n    use super::Seconds;\n}\n",
        ),
        ("src/b.rs", "use crate::a::Seconds;\n"),
    ]);
    let (ok, text) = check(dir.path());
    assert!(ok, "{text}");
}

#[test]
fn a_crate_depending_on_a_higher_floor_fails() {
    let dir = tree(&[("src/lib.rs", "")]);
    for (name, deps) in [
        ("core", "keyward-auth = { path = \"../auth\" }\n"),
        ("auth", ""),
        ("admin", "keyward-proxy = { path = \"../proxy\" }\n"),
        ("proxy", ""),
    ] {
        let crate_dir = dir.path().join("crates").join(name);
        std::fs::create_dir_all(crate_dir.join("src")).unwrap();
        std::fs::write(crate_dir.join("src/lib.rs"), "").unwrap();
        std::fs::write(
            crate_dir.join("Cargo.toml"),
            format!("[package]\nname = \"keyward-{name}\"\n\n[dependencies]\n{deps}"),
        )
        .unwrap();
    }
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    assert!(
        text.contains("keyward-core (floor 0) depends on keyward-auth"),
        "{text}"
    );
    assert!(
        text.contains("keyward-admin (floor 5) depends on keyward-proxy"),
        "{text}"
    );
}
