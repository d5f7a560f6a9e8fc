//! The group's DDL as a device runs it: text from the witness, so outside input.
//!
//! A device that starts with no snapshot and no table takes the group's tables from
//! the DDL the witness reports. That text must not do anything on the device but
//! create tables and indexes in `main` (no ATTACH of another file, no PRAGMA, no
//! trigger, no `CREATE TABLE … AS SELECT` calling the host's functions). The witness's
//! schema guard enforces the same with an authorizer; here the host's connection
//! belongs to the application, whose own authorizer we must not replace, so the text
//! is split into statements and each is let through only when its leading tokens are
//! `CREATE [UNIQUE] INDEX` or `CREATE TABLE <name> (`, in `main`. Each statement is then
//! prepared on its own and run once: SQLite compiles only the first statement of a
//! text, so whatever our tokenizer and SQLite's might disagree on after that point is
//! never run.

use crate::db::{Db, Stmt};
use crate::Error;

/// One token of SQL, as far as the check needs to tell them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A keyword or bare identifier, upper-cased.
    Word(String),
    /// A quoted identifier ("x", [x] or `x`), unquoted.
    Quoted(String),
    /// A string literal (a blob literal is the word `X` before one).
    Literal,
    /// Punctuation or an operator, one character at a time.
    Punct(char),
}

/// Splits `sql` into statements (their text, trimmed), each with its tokens; comments
/// and empty statements are dropped.
fn statements(sql: &str) -> Result<Vec<(&str, Vec<Token>)>, String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2);
            }
            b'\'' | b'"' | b'`' | b'[' => {
                let close = if c == b'[' { b']' } else { c };
                let mut j = i + 1;
                let mut text = Vec::new();
                loop {
                    match b.get(j) {
                        None => return Err("an unterminated quote".into()),
                        Some(&x) if x == close => {
                            // A doubled quote stands for itself (not in [...]).
                            if c != b'[' && b.get(j + 1) == Some(&close) {
                                text.push(close);
                                j += 2;
                                continue;
                            }
                            break;
                        }
                        Some(&x) => {
                            text.push(x);
                            j += 1;
                        }
                    }
                }
                tokens.push(if c == b'\'' {
                    Token::Literal
                } else {
                    Token::Quoted(String::from_utf8_lossy(&text).into_owned())
                });
                i = j + 1;
            }
            b';' => {
                i += 1;
                if !tokens.is_empty() {
                    out.push((sql[start..i - 1].trim(), std::mem::take(&mut tokens)));
                }
                start = i;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 => {
                let j = b[i..]
                    .iter()
                    .position(|&c| {
                        !(c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80)
                    })
                    .map_or(b.len(), |p| i + p);
                tokens.push(Token::Word(sql[i..j].to_ascii_uppercase()));
                i = j;
            }
            _ => {
                let ch = sql[i..].chars().next().unwrap_or('?');
                tokens.push(Token::Punct(ch));
                i += ch.len_utf8();
            }
        }
    }
    if !tokens.is_empty() {
        out.push((sql[start..].trim(), tokens));
    }
    Ok(out)
}

fn word(t: Option<&Token>, w: &str) -> bool {
    matches!(t, Some(Token::Word(x)) if x == w)
}

/// Why a statement's leading tokens are not a table or index in `main`, if they are not.
fn refusal(tokens: &[Token]) -> Option<String> {
    let mut t = tokens.iter().peekable();
    if !word(t.next(), "CREATE") {
        return Some("not a CREATE TABLE or CREATE INDEX".into());
    }
    let unique = word(t.peek().copied(), "UNIQUE");
    if unique {
        t.next();
    }
    let kind = match t.next() {
        Some(Token::Word(w)) if w == "INDEX" => "INDEX",
        Some(Token::Word(w)) if w == "TABLE" && !unique => "TABLE",
        Some(Token::Word(w)) if w == "TEMP" || w == "TEMPORARY" => {
            return Some("TEMP objects are not allowed".into())
        }
        Some(Token::Word(w)) => return Some(format!("CREATE {w} is not allowed")),
        _ => return Some("not a CREATE TABLE or CREATE INDEX".into()),
    };
    if word(t.peek().copied(), "IF") {
        t.next();
        if !(word(t.next(), "NOT") && word(t.next(), "EXISTS")) {
            return Some("IF must be IF NOT EXISTS".into());
        }
    }
    let name = |t: Option<&Token>| match t {
        Some(Token::Word(w)) => Some(w.clone()),
        Some(Token::Quoted(q)) => Some(q.to_ascii_uppercase()),
        _ => None,
    };
    let Some(first) = name(t.next()) else {
        return Some("no object name".into());
    };
    if matches!(t.peek(), Some(Token::Punct('.'))) {
        t.next();
        if first != "MAIN" {
            return Some(format!(
                "objects outside schema main are not allowed ({first})"
            ));
        }
        if name(t.next()).is_none() {
            return Some("no object name".into());
        }
    }
    match (kind, t.next()) {
        ("TABLE", Some(Token::Punct('('))) => None,
        ("TABLE", _) => Some("only CREATE TABLE name (columns …) is allowed".into()),
        ("INDEX", Some(Token::Word(w))) if w == "ON" => None,
        _ => Some("only CREATE INDEX name ON table (…) is allowed".into()),
    }
}

/// Runs the group's `ddl` on `db`, one checked statement at a time; refuses (before
/// running anything) a DDL with a statement that is not a CREATE TABLE or CREATE INDEX
/// in `main`, naming it.
pub fn run<D: Db>(db: &D, ddl: &str) -> Result<(), Error> {
    let refused = |index: usize, text: &str, why: &str| {
        let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let text: String = text.chars().take(80).collect();
        Error::Schema(format!(
            "the group's DDL from the witness is refused: statement {index} ({text}): {why}"
        ))
    };
    let stmts = statements(ddl).map_err(|why| refused(1, ddl, &why))?;
    for (i, (text, tokens)) in stmts.iter().enumerate() {
        if let Some(why) = refusal(tokens) {
            return Err(refused(i + 1, text, &why));
        }
    }
    for (text, _) in &stmts {
        db.prepare(text)?.execute()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ddl: &str) -> Result<usize, String> {
        let stmts = statements(ddl)?;
        for (i, (text, tokens)) in stmts.iter().enumerate() {
            if let Some(why) = refusal(tokens) {
                return Err(format!("statement {} ({text}): {why}", i + 1));
            }
        }
        Ok(stmts.len())
    }

    #[test]
    fn tables_and_indexes_pass() {
        let ddl = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT DEFAULT 'a;b');\n\
                   -- a comment; with a semicolon\n\
                   CREATE UNIQUE INDEX IF NOT EXISTS \"main\".\"n;b\" ON notes(body) WHERE body <> x'00';\n\
                   /* another; */ create table if not exists main.[t;2] (k TEXT PRIMARY KEY) WITHOUT ROWID;;";
        assert_eq!(check(ddl), Ok(3));
    }

    #[test]
    fn anything_else_is_refused() {
        for (ddl, why) in [
            ("ATTACH 'x.db' AS x", "not a CREATE"),
            (
                "CREATE TABLE t(id PRIMARY KEY); PRAGMA writable_schema = 1",
                "statement 2",
            ),
            ("CREATE TEMP TABLE t(x PRIMARY KEY)", "TEMP"),
            ("CREATE TABLE temp.t(x PRIMARY KEY)", "outside schema main"),
            ("CREATE TABLE other.t(x PRIMARY KEY)", "outside schema main"),
            (
                "CREATE TABLE t AS SELECT writefile('x', 'y') AS id",
                "CREATE TABLE name (",
            ),
            (
                "CREATE TRIGGER g AFTER INSERT ON t BEGIN DELETE FROM t; END",
                "CREATE TRIGGER",
            ),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("CREATE VIRTUAL TABLE v USING fts5(x)", "CREATE VIRTUAL"),
            ("CREATE UNIQUE TABLE t(x)", "CREATE TABLE"),
            ("CREATE TABLE 't;'(x PRIMARY KEY)", "no object name"),
            ("CREATE TABLE t(x PRIMARY KEY, y DEFAULT 'a", "unterminated"),
            (
                "CREATE TABLE t(x PRIMARY KEY); VACUUM INTO 'y'",
                "statement 2",
            ),
            ("CREATE TABLE \"unterminated(x)", "unterminated"),
            ("CREATE INDEX i", "CREATE INDEX name ON"),
        ] {
            let e = check(ddl).unwrap_err();
            assert!(e.contains(why), "{ddl}: {e}");
        }
    }

    #[cfg(feature = "rusqlite")]
    #[test]
    fn a_refused_ddl_runs_nothing() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let e = run(
            &conn,
            "CREATE TABLE t(x PRIMARY KEY); ATTACH ':memory:' AS a",
        )
        .unwrap_err();
        assert!(e.to_string().contains("statement 2 (ATTACH"), "{e}");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "the first statement did not run either");
        run(
            &conn,
            "CREATE TABLE t(x PRIMARY KEY); CREATE INDEX tx ON t(x, x)",
        )
        .unwrap();
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'index'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
    }
}
