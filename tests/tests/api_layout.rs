//! The extension's hand-kept prefix of `sqlite3_api_routines` (`ext/src/ffi/api.rs`)
//! against the full struct libsqlite3-sys generates from SQLite's `sqlite3ext.h`:
//! every field in the same place (all are pointers, so the order is the layout), and
//! every entry the extension calls typed with SQLite's parameter count and return
//! type. A field missed or swapped would make the extension call the wrong function
//! of the host.

use std::path::{Path, PathBuf};

/// One field: its name and, when typed, its (parameter count, return type).
type Field = (String, Option<(usize, String)>);

/// The source of libsqlite3-sys's bindings for loadable extensions, found through
/// `cargo metadata` (the version the workspace locks).
fn bindings() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(pdb_tests::root().join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "libsqlite3-sys")
        .expect("libsqlite3-sys in the workspace");
    Path::new(pkg["manifest_path"].as_str().unwrap())
        .with_file_name("sqlite3/bindgen_bundled_version_ext.rs")
}

/// The text of `struct name { ... }` in `src`.
fn struct_body<'a>(src: &'a str, name: &str) -> &'a str {
    let start = src
        .find(&format!("pub struct {name} {{"))
        .unwrap_or_else(|| panic!("no struct {name}"));
    let body = &src[start..];
    let open = body.find('{').unwrap() + 1;
    let mut depth = 1;
    for (i, c) in body[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &body[open..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("struct {name} does not end");
}

/// Splits `s` at commas outside brackets.
fn top_level(s: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut depth, mut from) = (Vec::new(), 0i32, 0);
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        let arrow = c == '>' && prev == '-';
        prev = c;
        match c {
            '(' | '<' | '[' => depth += 1,
            // The `>` of a return arrow closes nothing.
            '>' if arrow => {}
            ')' | '>' | ']' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[from..]);
    parts
}

/// A type as both files spell it: no paths, no typedefs, no spaces.
fn normalize(ty: &str) -> String {
    // SQLite's integer typedefs are Rust's fixed-width integers.
    ty.replace("::std::os::raw::", "")
        .replace("sqlite3_uint64", "u64")
        .replace("sqlite_uint64", "u64")
        .replace("sqlite3_int64", "i64")
        .replace("sqlite_int64", "i64")
        .replace("::std::option::Option", "Option")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// The fields of a struct body, in order; `unused` is the placeholder type's name.
fn fields(body: &str, unused: Option<&str>) -> Vec<Field> {
    top_level(body, ',')
        .into_iter()
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            let f = f.strip_prefix("pub ").unwrap_or(f);
            let (name, ty) = f.split_once(':').expect("name: type");
            let ty = normalize(ty);
            if Some(ty.as_str()) == unused {
                return (name.trim().to_string(), None);
            }
            let inner = ty
                .strip_prefix("Option<unsafeextern\"C\"fn(")
                .and_then(|t| t.strip_suffix('>'))
                .unwrap_or_else(|| panic!("{name}: not an optional function pointer: {ty}"));
            // Up to the parameter list's closing parenthesis, then the return type.
            let mut depth = 1;
            let close = inner
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap();
            let params = &inner[..close];
            let count = if params.is_empty() {
                0
            } else {
                top_level(params, ',')
                    .iter()
                    .filter(|p| !p.is_empty())
                    .count()
            };
            // bindgen leaves a trailing comma after a multi-line signature.
            let ret = inner[close + 1..].trim_end_matches(',');
            let ret = ret.strip_prefix("->").unwrap_or("()").to_string();
            (name.trim().to_string(), Some((count, ret)))
        })
        .collect()
}

#[test]
fn the_api_table_prefix_matches_sqlite3ext_h_field_by_field() {
    let ours_src = std::fs::read_to_string(pdb_tests::root().join("ext/src/ffi/api.rs")).unwrap();
    let theirs_src = std::fs::read_to_string(bindings()).unwrap();
    let ours = fields(struct_body(&ours_src, "ApiRoutines"), Some("Unused"));
    let theirs = fields(struct_body(&theirs_src, "sqlite3_api_routines"), None);
    assert!(
        ours.len() <= theirs.len(),
        "ours has {} fields, SQLite's {}",
        ours.len(),
        theirs.len()
    );
    let typed = ours.iter().filter(|f| f.1.is_some()).count();
    assert!(
        typed > 30,
        "only {typed} typed entries found: the parser lost them"
    );
    for (i, (mine, sqlite)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            mine.0, sqlite.0,
            "field {i}: ours is {}, SQLite's {}",
            mine.0, sqlite.0
        );
        if let Some((count, ret)) = &mine.1 {
            let (their_count, their_ret) = sqlite.1.as_ref().unwrap();
            assert_eq!(count, their_count, "{}: parameter count", mine.0);
            assert_eq!(ret, their_ret, "{}: return type", mine.0);
        }
    }
}
