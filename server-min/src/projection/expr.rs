//! Row-local expressions of a projection spec: parsed from SQL text into our own tree,
//! checked against the table's columns and an allow-list of deterministic functions,
//! and written back out as SQL by one routine that quotes every name and literal.
//! No text of a spec reaches SQLite except through [`Expr::sql`].
//!
//! Hand-written (a tokenizer and a precedence-climbing parser) rather than `sqlparser`:
//! the subset is small, and every construct outside it must be refused with a reason a
//! spec author can act on ("random() is not deterministic"), which is simpler to say
//! from a parser that only knows the subset than from a full SQL AST.

use pdb_core::schema::{affinity, quote, Affinity, TableInfo};

/// Longest expression accepted, in bytes of SQL text.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 32;
/// 2^63, the integer literal one past `i64::MAX`.
const MIN_MAGNITUDE: f64 = 9_223_372_036_854_775_808.0;

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// NULL.
    Null,
    /// A 64-bit integer.
    Int(i64),
    /// A finite double.
    Real(f64),
    /// Text (never holds NUL).
    Text(String),
    /// A BLOB (`X'..'`).
    Blob(Vec<u8>),
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `||`
    Concat,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `IS`
    Is,
    /// `IS NOT`
    IsNot,
    /// `AND`
    And,
    /// `OR`
    Or,
}

impl BinOp {
    fn sql(self) -> &'static str {
        match self {
            BinOp::Concat => "||",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "=",
            BinOp::Ne => "!=",
            BinOp::Is => "IS",
            BinOp::IsNot => "IS NOT",
            BinOp::And => "AND",
            BinOp::Or => "OR",
        }
    }

    /// Binding power: higher binds tighter (SQLite's order).
    fn power(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Is | BinOp::IsNot => 4,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 5,
            BinOp::Add | BinOp::Sub => 6,
            BinOp::Mul | BinOp::Div | BinOp::Rem => 7,
            BinOp::Concat => 8,
        }
    }
}

/// A type a value can be cast to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastType {
    /// INTEGER
    Integer,
    /// REAL
    Real,
    /// TEXT
    Text,
    /// BLOB
    Blob,
    /// NUMERIC
    Numeric,
}

impl CastType {
    fn sql(self) -> &'static str {
        match self {
            CastType::Integer => "INTEGER",
            CastType::Real => "REAL",
            CastType::Text => "TEXT",
            CastType::Blob => "BLOB",
            CastType::Numeric => "NUMERIC",
        }
    }
}

/// The type of value an expression yields, as far as it can be told without data:
/// what a filter's text is converted to before it is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Integers.
    Integer,
    /// Doubles.
    Real,
    /// Text.
    Text,
    /// Bytes.
    Blob,
    /// A number of either kind.
    Numeric,
    /// Unknown: a filter value is taken as an integer, a double or text, in that order.
    Any,
}

impl Kind {
    /// The name used in error messages and status documents.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Integer => "integer",
            Kind::Real => "real",
            Kind::Text => "text",
            Kind::Blob => "blob",
            Kind::Numeric => "numeric",
            Kind::Any => "any",
        }
    }
}

/// A deterministic function of the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// lower(x)
    Lower,
    /// upper(x)
    Upper,
    /// length(x)
    Length,
    /// substr(x, start[, len])
    Substr,
    /// trim(x[, chars])
    Trim,
    /// ltrim(x[, chars])
    Ltrim,
    /// rtrim(x[, chars])
    Rtrim,
    /// replace(x, from, to)
    Replace,
    /// instr(x, y)
    Instr,
    /// coalesce(a, b, ...)
    Coalesce,
    /// ifnull(a, b)
    Ifnull,
    /// nullif(a, b)
    Nullif,
    /// iif(cond, a, b)
    Iif,
    /// round(x[, digits])
    Round,
    /// typeof(x)
    Typeof,
    /// hex(x)
    Hex,
    /// date(t, modifiers...)
    Date,
    /// time(t, modifiers...)
    Time,
    /// datetime(t, modifiers...)
    Datetime,
    /// julianday(t, modifiers...)
    Julianday,
    /// unixepoch(t, modifiers...)
    Unixepoch,
    /// strftime(format, t, modifiers...)
    Strftime,
    /// json_extract(x, path): NULL where x is not JSON, instead of an error.
    JsonExtract,
}

/// Names and arities of the allow-list (`None`: no upper bound).
const FUNCS: &[(&str, Func, usize, Option<usize>)] = &[
    ("lower", Func::Lower, 1, Some(1)),
    ("upper", Func::Upper, 1, Some(1)),
    ("length", Func::Length, 1, Some(1)),
    ("substr", Func::Substr, 2, Some(3)),
    ("substring", Func::Substr, 2, Some(3)),
    ("trim", Func::Trim, 1, Some(2)),
    ("ltrim", Func::Ltrim, 1, Some(2)),
    ("rtrim", Func::Rtrim, 1, Some(2)),
    ("replace", Func::Replace, 3, Some(3)),
    ("instr", Func::Instr, 2, Some(2)),
    ("coalesce", Func::Coalesce, 2, None),
    ("ifnull", Func::Ifnull, 2, Some(2)),
    ("nullif", Func::Nullif, 2, Some(2)),
    ("iif", Func::Iif, 3, Some(3)),
    ("round", Func::Round, 1, Some(2)),
    ("typeof", Func::Typeof, 1, Some(1)),
    ("hex", Func::Hex, 1, Some(1)),
    ("date", Func::Date, 1, Some(8)),
    ("time", Func::Time, 1, Some(8)),
    ("datetime", Func::Datetime, 1, Some(8)),
    ("julianday", Func::Julianday, 1, Some(8)),
    ("unixepoch", Func::Unixepoch, 1, Some(8)),
    ("strftime", Func::Strftime, 2, Some(9)),
    ("json_extract", Func::JsonExtract, 2, Some(2)),
];

/// Functions SQLite has that a projection may not use, and why.
const REFUSED: &[(&str, &str)] = &[
    ("random", "is not deterministic"),
    ("randomblob", "is not deterministic"),
    ("changes", "depends on the connection"),
    ("total_changes", "depends on the connection"),
    ("last_insert_rowid", "depends on the connection"),
    ("sqlite_version", "depends on the server"),
    ("load_extension", "is not allowed"),
    (
        "abs",
        "can fail on some values (integer overflow); use iif(x < 0, -x, x)",
    ),
];

impl Func {
    fn name(self) -> &'static str {
        FUNCS.iter().find(|f| f.1 == self).map_or("?", |f| f.0)
    }

    /// Index of the first time-value argument, for the date and time functions.
    fn time_arg(self) -> Option<usize> {
        match self {
            Func::Date | Func::Time | Func::Datetime | Func::Julianday | Func::Unixepoch => Some(0),
            Func::Strftime => Some(1),
            _ => None,
        }
    }
}

/// An expression over one row of the spec's table.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A column, by index in the table.
    Column(usize),
    /// A literal.
    Lit(Lit),
    /// `-x`
    Neg(Box<Expr>),
    /// `NOT x`
    Not(Box<Expr>),
    /// `a op b`
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `x IS NULL` (or `IS NOT NULL` when the flag is set).
    IsNull(Box<Expr>, bool),
    /// `x [NOT] IN (literals)`
    In(Box<Expr>, Vec<Lit>, bool),
    /// `x [NOT] BETWEEN lo AND hi`
    Between(Box<Expr>, Box<Expr>, Box<Expr>, bool),
    /// `x [NOT] LIKE 'pattern'`, case-insensitive for ASCII as in SQLite.
    Like(Box<Expr>, String, bool),
    /// `CAST(x AS type)`
    Cast(Box<Expr>, CastType),
    /// A function of the allow-list.
    Call(Func, Vec<Expr>),
    /// `CASE [operand] WHEN .. THEN .. [ELSE ..] END`
    Case(Option<Box<Expr>>, Vec<(Expr, Expr)>, Option<Box<Expr>>),
}

/// An aggregate measure.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// `count(*)`
    CountRows,
    /// `count(x)`: rows where x is not NULL.
    Count(Expr),
    /// `sum(x)`
    Sum(Expr),
    /// `avg(x)`
    Avg(Expr),
    /// `min(x)`
    Min(Expr),
    /// `max(x)`
    Max(Expr),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A double-quoted, backquoted or bracketed identifier: always a name.
    Quoted(String),
    Str(String),
    Int(i64),
    Real(f64),
    Blob(Vec<u8>),
    /// 9223372036854775808: a double, except right after a minus sign, where SQLite
    /// reads it as the smallest 64-bit integer.
    MinMagnitude,
    Sym(&'static str),
}

fn tokens(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') || c == b'/' && b.get(i + 1) == Some(&b'*') {
            return Err("comments are not allowed".into());
        }
        if c == b';' {
            return Err("\";\": an expression is not a statement".into());
        }
        if c == b'\'' {
            let (s, next) = quoted(src, i, b'\'')?;
            out.push(Tok::Str(s));
            i = next;
            continue;
        }
        if c == b'"' || c == b'`' {
            let (s, next) = quoted(src, i, c)?;
            out.push(Tok::Quoted(s));
            i = next;
            continue;
        }
        if c == b'[' {
            let end = src[i..].find(']').ok_or("unclosed \"[\"")? + i;
            out.push(Tok::Quoted(src[i + 1..end].to_string()));
            i = end + 1;
            continue;
        }
        if (c == b'x' || c == b'X') && b.get(i + 1) == Some(&b'\'') {
            let (s, next) = quoted(src, i + 1, b'\'')?;
            if s.len() % 2 != 0 || !s.bytes().all(|h| h.is_ascii_hexdigit()) {
                return Err(format!("X'{s}' is not a blob literal"));
            }
            let bytes = (0..s.len())
                .step_by(2)
                .map(|k| u8::from_str_radix(&s[k..k + 2], 16).unwrap_or(0))
                .collect();
            out.push(Tok::Blob(bytes));
            i = next;
            continue;
        }
        if c.is_ascii_digit() || c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            let (t, next) = number(src, i)?;
            out.push(t);
            i = next;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            out.push(Tok::Ident(src[start..i].to_string()));
            continue;
        }
        let two = src.get(i..i + 2).unwrap_or("");
        let sym = match two {
            "||" | "<=" | ">=" | "!=" | "<>" | "==" => Some(two),
            _ => None,
        };
        if let Some(s) = sym {
            out.push(Tok::Sym(match s {
                "||" => "||",
                "<=" => "<=",
                ">=" => ">=",
                "==" => "=",
                _ => "!=",
            }));
            i += 2;
            continue;
        }
        let one = match c {
            b'(' => "(",
            b')' => ")",
            b',' => ",",
            b'*' => "*",
            b'/' => "/",
            b'%' => "%",
            b'+' => "+",
            b'-' => "-",
            b'<' => "<",
            b'>' => ">",
            b'=' => "=",
            b'.' => ".",
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected character {ch:?}"));
            }
        };
        out.push(Tok::Sym(one));
        i += 1;
    }
    Ok(out)
}

/// A quoted string or identifier starting at `b[i] == q`; a doubled quote is one.
fn quoted(src: &str, i: usize, q: u8) -> Result<(String, usize), String> {
    let b = src.as_bytes();
    let mut s = Vec::new();
    let mut j = i + 1;
    loop {
        match b.get(j) {
            None => return Err(format!("unclosed {}", q as char)),
            Some(&c) if c == q => {
                if b.get(j + 1) == Some(&q) {
                    s.push(q);
                    j += 2;
                } else {
                    break;
                }
            }
            Some(&0) => return Err("NUL in a literal".into()),
            Some(&c) => {
                s.push(c);
                j += 1;
            }
        }
    }
    // The source is a str and quotes are ASCII, so the bytes between stay UTF-8.
    Ok((String::from_utf8(s).map_err(|e| e.to_string())?, j + 1))
}

fn number(src: &str, i: usize) -> Result<(Tok, usize), String> {
    let b = src.as_bytes();
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X')) {
        let mut j = i + 2;
        while j < b.len() && b[j].is_ascii_hexdigit() {
            j += 1;
        }
        let v = u64::from_str_radix(&src[i + 2..j], 16)
            .map_err(|_| format!("{} is not a number", &src[i..j]))?;
        // SQLite reads hex literals as two's complement 64-bit integers.
        return Ok((Tok::Int(v as i64), j));
    }
    let mut j = i;
    let mut real = false;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    if b.get(j) == Some(&b'.') {
        real = true;
        j += 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        real = true;
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
    }
    let text = &src[i..j];
    if b.get(j)
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
    {
        return Err(format!("{text}{} is not a number", b[j] as char));
    }
    if !real {
        if let Ok(v) = text.parse::<i64>() {
            return Ok((Tok::Int(v), j));
        }
        if text.trim_start_matches('0') == "9223372036854775808" {
            return Ok((Tok::MinMagnitude, j));
        }
    }
    // Integers too large for 64 bits are doubles in SQLite too.
    let v: f64 = text
        .parse()
        .map_err(|_| format!("{text} is not a number"))?;
    if !v.is_finite() {
        return Err(format!("{text} is too large"));
    }
    Ok((Tok::Real(v), j))
}

struct Parser<'a> {
    toks: Vec<Tok>,
    at: usize,
    table: &'a TableInfo,
    depth: usize,
}

fn kw(t: Option<&Tok>, word: &str) -> bool {
    matches!(t, Some(Tok::Ident(w)) if w.eq_ignore_ascii_case(word))
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn peek2(&self) -> Option<&Tok> {
        self.toks.get(self.at + 1)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn eat_kw(&mut self, word: &str) -> bool {
        if kw(self.peek(), word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn eat(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, sym: &str) -> Result<(), String> {
        if self.eat(sym) {
            Ok(())
        } else {
            Err(format!("expected \"{sym}\" {}", self.near()))
        }
    }

    fn expect_kw(&mut self, word: &str) -> Result<(), String> {
        if self.eat_kw(word) {
            Ok(())
        } else {
            Err(format!("expected {word} {}", self.near()))
        }
    }

    fn near(&self) -> String {
        match self.peek() {
            None => "at the end".into(),
            Some(t) => format!("near {}", show(t)),
        }
    }

    fn expr(&mut self, min: u8) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        let mut left = self.prefix()?;
        loop {
            if let Some(e) = self.postfix(&left, min)? {
                left = e;
                continue;
            }
            let Some(op) = self.binop() else { break };
            if op.power() < min {
                break;
            }
            self.consume_binop(op);
            let right = self.expr(op.power() + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn binop(&self) -> Option<BinOp> {
        Some(match self.peek()? {
            Tok::Sym("||") => BinOp::Concat,
            Tok::Sym("*") => BinOp::Mul,
            Tok::Sym("/") => BinOp::Div,
            Tok::Sym("%") => BinOp::Rem,
            Tok::Sym("+") => BinOp::Add,
            Tok::Sym("-") => BinOp::Sub,
            Tok::Sym("<") => BinOp::Lt,
            Tok::Sym("<=") => BinOp::Le,
            Tok::Sym(">") => BinOp::Gt,
            Tok::Sym(">=") => BinOp::Ge,
            Tok::Sym("=") => BinOp::Eq,
            Tok::Sym("!=") => BinOp::Ne,
            t if kw(Some(t), "AND") => BinOp::And,
            t if kw(Some(t), "OR") => BinOp::Or,
            t if kw(Some(t), "IS") => {
                // IS NULL and IS NOT NULL are postfix forms, handled before this.
                if kw(self.peek2(), "NOT") {
                    BinOp::IsNot
                } else {
                    BinOp::Is
                }
            }
            _ => return None,
        })
    }

    fn consume_binop(&mut self, op: BinOp) {
        self.at += if op == BinOp::IsNot { 2 } else { 1 };
    }

    /// `IS [NOT] NULL`, `[NOT] IN`, `[NOT] BETWEEN`, `[NOT] LIKE`, at equality level.
    fn postfix(&mut self, left: &Expr, min: u8) -> Result<Option<Expr>, String> {
        const LEVEL: u8 = 4;
        if min > LEVEL {
            return Ok(None);
        }
        let save = self.at;
        if self.eat_kw("IS") {
            let not = self.eat_kw("NOT");
            if self.eat_kw("NULL") {
                return Ok(Some(Expr::IsNull(Box::new(left.clone()), not)));
            }
            self.at = save;
            return Ok(None);
        }
        if self.eat_kw("NOTNULL") {
            return Ok(Some(Expr::IsNull(Box::new(left.clone()), true)));
        }
        if self.eat_kw("ISNULL") {
            return Ok(Some(Expr::IsNull(Box::new(left.clone()), false)));
        }
        let not = self.eat_kw("NOT");
        if self.eat_kw("IN") {
            self.expect("(")?;
            if kw(self.peek(), "SELECT") {
                return Err("subqueries are not allowed".into());
            }
            let mut list = Vec::new();
            loop {
                list.push(self.literal_arg("IN")?);
                if !self.eat(",") {
                    break;
                }
            }
            self.expect(")")?;
            return Ok(Some(Expr::In(Box::new(left.clone()), list, not)));
        }
        if self.eat_kw("BETWEEN") {
            let lo = self.expr(LEVEL + 1)?;
            self.expect_kw("AND")?;
            let hi = self.expr(LEVEL + 1)?;
            return Ok(Some(Expr::Between(
                Box::new(left.clone()),
                Box::new(lo),
                Box::new(hi),
                not,
            )));
        }
        if self.eat_kw("LIKE") {
            let Some(Tok::Str(p)) = self.next() else {
                return Err("LIKE takes a string literal pattern".into());
            };
            if kw(self.peek(), "ESCAPE") {
                return Err("LIKE ... ESCAPE is not supported".into());
            }
            return Ok(Some(Expr::Like(Box::new(left.clone()), p, not)));
        }
        for refused in ["GLOB", "REGEXP", "MATCH"] {
            if kw(self.peek(), refused) {
                return Err(format!("{refused} is not allowed"));
            }
        }
        if not {
            return Err(format!("unexpected NOT {}", self.near()));
        }
        self.at = save;
        Ok(None)
    }

    fn literal_arg(&mut self, what: &str) -> Result<Lit, String> {
        let neg = self.eat("-");
        match self.next() {
            Some(Tok::Int(v)) if neg => Ok(Lit::Int(-v)),
            Some(Tok::MinMagnitude) if neg => Ok(Lit::Int(i64::MIN)),
            Some(Tok::MinMagnitude) => Ok(Lit::Real(MIN_MAGNITUDE)),
            Some(Tok::Real(v)) if neg => Ok(Lit::Real(-v)),
            Some(Tok::Int(v)) => Ok(Lit::Int(v)),
            Some(Tok::Real(v)) => Ok(Lit::Real(v)),
            Some(Tok::Str(s)) if !neg => Ok(Lit::Text(s)),
            Some(Tok::Blob(b)) if !neg => Ok(Lit::Blob(b)),
            Some(Tok::Ident(w)) if !neg && w.eq_ignore_ascii_case("NULL") => Ok(Lit::Null),
            _ => Err(format!("{what} takes a list of literals")),
        }
    }

    fn prefix(&mut self) -> Result<Expr, String> {
        let Some(t) = self.next() else {
            return Err("the expression ends too early".into());
        };
        Ok(match t {
            Tok::Int(v) => Expr::Lit(Lit::Int(v)),
            Tok::Real(v) => Expr::Lit(Lit::Real(v)),
            Tok::Str(s) => Expr::Lit(Lit::Text(s)),
            Tok::Blob(b) => Expr::Lit(Lit::Blob(b)),
            Tok::MinMagnitude => Expr::Lit(Lit::Real(MIN_MAGNITUDE)),
            Tok::Sym("-") => {
                // A negative literal is a literal (unary minus binds tightest in SQLite),
                // so that writing the tree out and parsing it again gives the same tree.
                let lit = match self.peek() {
                    Some(Tok::Int(v)) => Some(Lit::Int(-v)),
                    Some(Tok::MinMagnitude) => Some(Lit::Int(i64::MIN)),
                    Some(Tok::Real(v)) => Some(Lit::Real(-v)),
                    _ => None,
                };
                match lit {
                    Some(l) => {
                        self.at += 1;
                        Expr::Lit(l)
                    }
                    None => Expr::Neg(Box::new(self.expr(9)?)),
                }
            }
            Tok::Sym("+") => self.expr(9)?,
            Tok::Sym("(") => {
                if kw(self.peek(), "SELECT") || kw(self.peek(), "WITH") {
                    return Err("subqueries are not allowed".into());
                }
                let e = self.expr(0)?;
                self.expect(")")?;
                e
            }
            Tok::Quoted(name) => self.column(&name)?,
            Tok::Ident(w) => self.word(w)?,
            Tok::Sym(s) => return Err(format!("unexpected \"{s}\"")),
        })
    }

    fn word(&mut self, w: String) -> Result<Expr, String> {
        let upper = w.to_ascii_uppercase();
        match upper.as_str() {
            "NULL" => return Ok(Expr::Lit(Lit::Null)),
            "TRUE" => return Ok(Expr::Lit(Lit::Int(1))),
            "FALSE" => return Ok(Expr::Lit(Lit::Int(0))),
            "NOT" => return Ok(Expr::Not(Box::new(self.expr(3)?))),
            "CURRENT_TIME" | "CURRENT_DATE" | "CURRENT_TIMESTAMP" => {
                return Err(format!("{upper} is not deterministic"))
            }
            "SELECT" | "WITH" | "EXISTS" | "VALUES" => {
                return Err("subqueries are not allowed".into())
            }
            "CAST" => {
                self.expect("(")?;
                let e = self.expr(0)?;
                self.expect_kw("AS")?;
                let ty = match self.next() {
                    Some(Tok::Ident(t)) => match t.to_ascii_uppercase().as_str() {
                        "INTEGER" | "INT" => CastType::Integer,
                        "REAL" => CastType::Real,
                        "TEXT" => CastType::Text,
                        "BLOB" => CastType::Blob,
                        "NUMERIC" => CastType::Numeric,
                        other => {
                            return Err(format!(
                                "CAST to {other}: use INTEGER, REAL, TEXT, BLOB or NUMERIC"
                            ))
                        }
                    },
                    _ => return Err("CAST needs a type".into()),
                };
                self.expect(")")?;
                return Ok(Expr::Cast(Box::new(e), ty));
            }
            "CASE" => return self.case(),
            "RAISE" => return Err("RAISE is not allowed".into()),
            _ => {}
        }
        if self.peek() == Some(&Tok::Sym("(")) {
            self.at += 1;
            return self.call(&w);
        }
        if self.peek() == Some(&Tok::Sym(".")) {
            self.at += 1;
            let col = match self.next() {
                Some(Tok::Ident(c) | Tok::Quoted(c)) => c,
                _ => return Err(format!("expected a column after \"{w}.\"")),
            };
            if !w.eq_ignore_ascii_case(&self.table.name) {
                return Err(format!(
                    "\"{w}.{col}\" names another table: a projection reads only \"{}\"",
                    self.table.name
                ));
            }
            return self.column(&col);
        }
        self.column(&w)
    }

    fn case(&mut self) -> Result<Expr, String> {
        let operand = if kw(self.peek(), "WHEN") {
            None
        } else {
            Some(Box::new(self.expr(0)?))
        };
        let mut whens = Vec::new();
        while self.eat_kw("WHEN") {
            let w = self.expr(0)?;
            self.expect_kw("THEN")?;
            whens.push((w, self.expr(0)?));
        }
        if whens.is_empty() {
            return Err("CASE needs a WHEN".into());
        }
        let other = if self.eat_kw("ELSE") {
            Some(Box::new(self.expr(0)?))
        } else {
            None
        };
        self.expect_kw("END")?;
        Ok(Expr::Case(operand, whens, other))
    }

    fn column(&self, name: &str) -> Result<Expr, String> {
        self.table
            .columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
            .map(Expr::Column)
            .ok_or_else(|| {
                format!(
                    "no column \"{name}\" in table \"{}\" (it has {})",
                    self.table.name,
                    self.table
                        .columns
                        .iter()
                        .map(|c| format!("\"{}\"", c.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    fn args(&mut self) -> Result<Vec<Expr>, String> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        if kw(self.peek(), "DISTINCT") {
            return Err("DISTINCT is not allowed".into());
        }
        loop {
            args.push(self.expr(0)?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn call(&mut self, name: &str) -> Result<Expr, String> {
        let lower = name.to_ascii_lowercase();
        if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == lower) {
            return Err(format!("{lower}() {why}"));
        }
        if matches!(
            lower.as_str(),
            "count" | "sum" | "avg" | "min" | "max" | "total" | "group_concat" | "string_agg"
        ) {
            return Err(format!(
                "{lower}() is an aggregate: aggregates go in an aggregate projection's measures"
            ));
        }
        let Some(&(_, func, lo, hi)) = FUNCS.iter().find(|f| f.0 == lower) else {
            return Err(format!(
                "{lower}() is not allowed (allowed: {})",
                FUNCS.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
            ));
        };
        let args = self.args()?;
        if args.len() < lo || hi.is_some_and(|h| args.len() > h) {
            return Err(format!(
                "{lower}() takes {} arguments, not {}",
                arity(lo, hi),
                args.len()
            ));
        }
        check_call(func, &args)?;
        Ok(Expr::Call(func, args))
    }
}

fn arity(lo: usize, hi: Option<usize>) -> String {
    match hi {
        Some(h) if h == lo => lo.to_string(),
        Some(h) => format!("{lo} to {h}"),
        None => format!("at least {lo}"),
    }
}

/// The date functions read the clock for 'now' and the machine's time zone for
/// 'localtime' and 'utc': their modifiers (and strftime's format) must be literals
/// that do neither. A time value from a column could still say 'now'; that case is
/// defused where the call is written out (see [`Expr::sql`]).
fn check_call(func: Func, args: &[Expr]) -> Result<(), String> {
    if let Some(t) = func.time_arg() {
        for (i, a) in args.iter().enumerate() {
            if i == t {
                if let Expr::Lit(Lit::Text(s)) = a {
                    if s.trim().eq_ignore_ascii_case("now") {
                        return Err(format!("{}('now') is not deterministic", func.name()));
                    }
                }
                continue;
            }
            let Expr::Lit(Lit::Text(s)) = a else {
                return Err(format!(
                    "{}(): argument {} must be a string literal",
                    func.name(),
                    i + 1
                ));
            };
            let m = s.trim().to_ascii_lowercase();
            if m == "now" || m == "localtime" || m == "utc" {
                return Err(format!(
                    "{}(): '{s}' depends on the clock or the server's time zone",
                    func.name()
                ));
            }
        }
    }
    if func == Func::JsonExtract {
        match &args[1] {
            Expr::Lit(Lit::Text(p)) if p.starts_with('$') => {}
            _ => {
                return Err(
                    "json_extract(): the path must be a string literal starting with $".into(),
                )
            }
        }
    }
    Ok(())
}

fn show(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => s.clone(),
        Tok::Quoted(s) => quote(s),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Int(v) => v.to_string(),
        Tok::Real(v) => v.to_string(),
        Tok::Blob(_) => "a blob".into(),
        Tok::MinMagnitude => "9223372036854775808".into(),
        Tok::Sym(s) => format!("\"{s}\""),
    }
}

fn parser<'a>(src: &str, table: &'a TableInfo) -> Result<Parser<'a>, String> {
    if src.len() > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} bytes"));
    }
    Ok(Parser {
        toks: tokens(src)?,
        at: 0,
        table,
        depth: 0,
    })
}

impl Parser<'_> {
    fn finish<T>(&self, v: T) -> Result<T, String> {
        match self.peek() {
            None => Ok(v),
            Some(t) => Err(format!("unexpected {} after the expression", show(t))),
        }
    }
}

/// Parses a row expression over `table`.
pub fn parse(src: &str, table: &TableInfo) -> Result<Expr, String> {
    let mut p = parser(src, table)?;
    let e = p.expr(0)?;
    p.finish(e)
}

/// Parses an aggregate measure: `count(*)`, or count/sum/avg/min/max of a row expression.
pub fn parse_measure(src: &str, table: &TableInfo) -> Result<Measure, String> {
    let mut p = parser(src, table)?;
    let name = match p.next() {
        Some(Tok::Ident(w)) => w.to_ascii_lowercase(),
        _ => {
            return Err("a measure is count(*), count(x), sum(x), avg(x), min(x) or max(x)".into())
        }
    };
    p.expect("(")?;
    if name == "count" && p.eat("*") {
        p.expect(")")?;
        return p.finish(Measure::CountRows);
    }
    if kw(p.peek(), "DISTINCT") {
        return Err(
            "DISTINCT is not allowed in a measure (it cannot be maintained row by row)".into(),
        );
    }
    let e = p.expr(0)?;
    p.expect(")")?;
    let m = match name.as_str() {
        "count" => Measure::Count(e),
        "sum" | "total" => Measure::Sum(e),
        "avg" => Measure::Avg(e),
        "min" => Measure::Min(e),
        "max" => Measure::Max(e),
        other => {
            return Err(format!(
            "{other}() is not a measure: use count(*), count(x), sum(x), avg(x), min(x) or max(x)"
        ))
        }
    };
    p.finish(m)
}

/// Writes `v` as an SQL literal.
pub fn lit_sql(v: &Lit) -> String {
    match v {
        Lit::Null => "NULL".into(),
        Lit::Int(i) => {
            if *i < 0 {
                format!("({i})")
            } else {
                i.to_string()
            }
        }
        Lit::Real(r) => {
            // `{:?}` is the shortest text that reads back as the same double.
            let s = format!("{r:?}");
            if *r < 0.0 || s.starts_with('-') {
                format!("({s})")
            } else {
                s
            }
        }
        Lit::Text(s) => format!("'{}'", s.replace('\'', "''")),
        Lit::Blob(b) => {
            let mut s = String::from("X'");
            for byte in b {
                s.push_str(&format!("{byte:02X}"));
            }
            s.push('\'');
            s
        }
    }
}

impl Expr {
    /// The SQL text of the expression, each column written as `row` followed by its
    /// quoted name (`NEW.` in a trigger, `"t".` or nothing in a query).
    pub fn sql(&self, table: &TableInfo, row: &str) -> String {
        let mut s = String::new();
        self.write(&mut s, table, row);
        s
    }

    fn write(&self, s: &mut String, t: &TableInfo, row: &str) {
        match self {
            Expr::Column(i) => {
                s.push_str(row);
                s.push_str(&quote(&t.columns[*i].name));
            }
            Expr::Lit(v) => s.push_str(&lit_sql(v)),
            Expr::Neg(e) => {
                s.push_str("(-");
                e.write(s, t, row);
                s.push(')');
            }
            Expr::Not(e) => {
                s.push_str("(NOT ");
                e.write(s, t, row);
                s.push(')');
            }
            Expr::Binary(op, a, b) => {
                s.push('(');
                a.write(s, t, row);
                s.push(' ');
                s.push_str(op.sql());
                s.push(' ');
                b.write(s, t, row);
                s.push(')');
            }
            Expr::IsNull(e, not) => {
                s.push('(');
                e.write(s, t, row);
                s.push_str(if *not { " IS NOT NULL)" } else { " IS NULL)" });
            }
            Expr::In(e, list, not) => {
                s.push('(');
                e.write(s, t, row);
                s.push_str(if *not { " NOT IN (" } else { " IN (" });
                let items: Vec<String> = list.iter().map(lit_sql).collect();
                s.push_str(&items.join(", "));
                s.push_str("))");
            }
            Expr::Between(e, lo, hi, not) => {
                s.push('(');
                e.write(s, t, row);
                s.push_str(if *not { " NOT BETWEEN " } else { " BETWEEN " });
                lo.write(s, t, row);
                s.push_str(" AND ");
                hi.write(s, t, row);
                s.push(')');
            }
            Expr::Like(e, p, not) => {
                s.push('(');
                e.write(s, t, row);
                s.push_str(if *not { " NOT LIKE " } else { " LIKE " });
                s.push_str(&lit_sql(&Lit::Text(p.clone())));
                s.push(')');
            }
            Expr::Cast(e, ty) => {
                s.push_str("CAST(");
                e.write(s, t, row);
                s.push_str(" AS ");
                s.push_str(ty.sql());
                s.push(')');
            }
            Expr::Call(f, args) => self.write_call(s, t, row, *f, args),
            Expr::Case(op, whens, other) => {
                s.push_str("(CASE");
                if let Some(o) = op {
                    s.push(' ');
                    o.write(s, t, row);
                }
                for (w, th) in whens {
                    s.push_str(" WHEN ");
                    w.write(s, t, row);
                    s.push_str(" THEN ");
                    th.write(s, t, row);
                }
                if let Some(e) = other {
                    s.push_str(" ELSE ");
                    e.write(s, t, row);
                }
                s.push_str(" END)");
            }
        }
    }

    fn write_call(&self, s: &mut String, t: &TableInfo, row: &str, f: Func, args: &[Expr]) {
        let arg = |i: usize| args[i].sql(t, row);
        if f == Func::JsonExtract {
            // json_extract fails on text that is not JSON; a projection must not.
            let x = arg(0);
            s.push_str(&format!(
                "(CASE WHEN json_valid({x}) THEN json_extract({x}, {}) END)",
                arg(1)
            ));
            return;
        }
        s.push_str(f.name());
        s.push('(');
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            if Some(i) == f.time_arg() && !matches!(a, Expr::Lit(_)) {
                // A row whose time value says 'now' would read the clock.
                let x = a.sql(t, row);
                s.push_str(&format!(
                    "(CASE WHEN {x} LIKE 'now' THEN NULL ELSE {x} END)"
                ));
            } else {
                a.write(s, t, row);
            }
        }
        s.push(')');
    }

    /// What a value of this expression is, for converting filter text.
    pub fn kind(&self, table: &TableInfo) -> Kind {
        match self {
            Expr::Column(i) => match affinity(&table.columns[*i].decl_type) {
                Affinity::Integer => Kind::Integer,
                Affinity::Real => Kind::Real,
                Affinity::Text => Kind::Text,
                Affinity::Numeric => Kind::Numeric,
                Affinity::Blob => Kind::Any,
            },
            Expr::Lit(Lit::Int(_)) => Kind::Integer,
            Expr::Lit(Lit::Real(_)) => Kind::Real,
            Expr::Lit(Lit::Text(_)) => Kind::Text,
            Expr::Lit(Lit::Blob(_)) => Kind::Blob,
            Expr::Lit(Lit::Null) => Kind::Any,
            Expr::Neg(_) => Kind::Numeric,
            Expr::Binary(op, _, _) => match op {
                BinOp::Concat => Kind::Text,
                BinOp::Mul | BinOp::Div | BinOp::Rem | BinOp::Add | BinOp::Sub => Kind::Numeric,
                _ => Kind::Integer,
            },
            Expr::Not(_) | Expr::IsNull(..) | Expr::In(..) | Expr::Between(..) | Expr::Like(..) => {
                Kind::Integer
            }
            Expr::Cast(_, ty) => match ty {
                CastType::Integer => Kind::Integer,
                CastType::Real => Kind::Real,
                CastType::Text => Kind::Text,
                CastType::Blob => Kind::Blob,
                CastType::Numeric => Kind::Numeric,
            },
            Expr::Call(f, _) => match f {
                Func::Lower
                | Func::Upper
                | Func::Substr
                | Func::Trim
                | Func::Ltrim
                | Func::Rtrim
                | Func::Replace
                | Func::Typeof
                | Func::Hex
                | Func::Date
                | Func::Time
                | Func::Datetime
                | Func::Strftime => Kind::Text,
                Func::Length | Func::Instr | Func::Unixepoch => Kind::Integer,
                Func::Julianday | Func::Round => Kind::Real,
                Func::Coalesce | Func::Ifnull | Func::Nullif | Func::Iif | Func::JsonExtract => {
                    Kind::Any
                }
            },
            Expr::Case(..) => Kind::Any,
        }
    }

    /// The columns the expression reads.
    pub fn columns(&self, out: &mut Vec<usize>) {
        let mut visit = |e: &Expr| e.columns(out);
        match self {
            Expr::Column(i) => {
                if !out.contains(i) {
                    out.push(*i)
                }
            }
            Expr::Lit(_) => {}
            Expr::Neg(e) | Expr::Not(e) | Expr::IsNull(e, _) | Expr::In(e, _, _) => visit(e),
            Expr::Like(e, _, _) | Expr::Cast(e, _) => visit(e),
            Expr::Binary(_, a, b) => {
                visit(a);
                visit(b);
            }
            Expr::Between(e, lo, hi, _) => {
                visit(e);
                visit(lo);
                visit(hi);
            }
            Expr::Call(_, args) => args.iter().for_each(visit),
            Expr::Case(op, whens, other) => {
                if let Some(o) = op {
                    visit(o);
                }
                for (w, t) in whens {
                    visit(w);
                    visit(t);
                }
                if let Some(e) = other {
                    visit(e);
                }
            }
        }
    }
}

impl Measure {
    /// The row expression measured, if any.
    pub fn arg(&self) -> Option<&Expr> {
        match self {
            Measure::CountRows => None,
            Measure::Count(e)
            | Measure::Sum(e)
            | Measure::Avg(e)
            | Measure::Min(e)
            | Measure::Max(e) => Some(e),
        }
    }

    /// The measure as SQL over the rows of a GROUP BY (what a recomputation runs).
    pub fn sql(&self, table: &TableInfo, row: &str) -> String {
        let a = |e: &Expr| e.sql(table, row);
        match self {
            Measure::CountRows => "count(*)".into(),
            Measure::Count(e) => format!("count({})", a(e)),
            Measure::Sum(e) => format!("sum({})", a(e)),
            Measure::Avg(e) => format!("avg({})", a(e)),
            Measure::Min(e) => format!("min({})", a(e)),
            Measure::Max(e) => format!("max({})", a(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pdb_core::schema::Column;

    pub(crate) fn events() -> TableInfo {
        let col = |name: &str, ty: &str, pk: u8| Column {
            name: name.into(),
            decl_type: ty.into(),
            pk,
            notnull: false,
            default: None,
        };
        TableInfo {
            name: "events".into(),
            columns: vec![
                col("id", "INTEGER", 1),
                col("title", "TEXT", 0),
                col("starts_at", "TEXT", 0),
                col("duration", "INTEGER", 0),
                col("owner", "TEXT", 0),
            ],
            integer_pk: true,
            unique: vec![],
        }
    }

    fn sql(src: &str) -> String {
        parse(src, &events()).unwrap().sql(&events(), "NEW.")
    }

    fn refused(src: &str) -> String {
        parse(src, &events()).unwrap_err()
    }

    #[test]
    fn expressions_are_written_back_fully_quoted_and_parenthesized() {
        assert_eq!(
            sql("substr(starts_at, 1, 7)"),
            "substr(NEW.\"starts_at\", 1, 7)"
        );
        assert_eq!(
            sql("duration * 2 + 1 > 10 AND title LIKE 'a%'"),
            "((((NEW.\"duration\" * 2) + 1) > 10) AND (NEW.\"title\" LIKE 'a%'))"
        );
        assert_eq!(sql("owner IS NOT NULL"), "(NEW.\"owner\" IS NOT NULL)");
        assert_eq!(sql("title = 'it''s'"), "(NEW.\"title\" = 'it''s')");
        assert_eq!(
            sql("duration IN (1, -2, NULL)"),
            "(NEW.\"duration\" IN (1, (-2), NULL))"
        );
        assert_eq!(sql("\"Title\""), "NEW.\"title\"");
        assert_eq!(sql("events.duration"), "NEW.\"duration\"");
        assert_eq!(
            sql("json_extract(title, '$.a')"),
            "(CASE WHEN json_valid(NEW.\"title\") THEN json_extract(NEW.\"title\", '$.a') END)"
        );
        assert_eq!(
            sql("strftime('%Y-%m', starts_at)"),
            "strftime('%Y-%m', (CASE WHEN NEW.\"starts_at\" LIKE 'now' THEN NULL ELSE NEW.\"starts_at\" END))"
        );
    }

    #[test]
    fn precedence_follows_sqlite() {
        assert_eq!(sql("1 + 2 * 3"), "(1 + (2 * 3))");
        assert_eq!(sql("NOT 1 = 2"), "(NOT (1 = 2))");
        assert_eq!(sql("1 = 1 OR 0 AND 0"), "((1 = 1) OR (0 AND 0))");
        assert_eq!(sql("-9223372036854775808"), "(-9223372036854775808)");
        assert_eq!(sql("9223372036854775808"), "9.223372036854776e18");
        assert_eq!(sql("'a' || 'b' || 'c'"), "(('a' || 'b') || 'c')");
        assert_eq!(
            sql("duration BETWEEN 1 AND 2 AND 1"),
            "((NEW.\"duration\" BETWEEN 1 AND 2) AND 1)"
        );
        assert_eq!(sql("duration IS NOT 3"), "(NEW.\"duration\" IS NOT 3)");
    }

    #[test]
    fn what_is_outside_the_subset_is_refused_with_a_reason() {
        assert!(
            refused("random()").contains("not deterministic"),
            "{}",
            refused("random()")
        );
        assert!(refused("datetime('now')").contains("not deterministic"));
        assert!(refused("date(starts_at, 'localtime')").contains("time zone"));
        assert!(refused("CURRENT_TIMESTAMP").contains("not deterministic"));
        assert!(refused("(SELECT 1)").contains("subqueries"));
        assert!(refused("duration IN (SELECT id FROM other)").contains("subqueries"));
        assert!(refused("EXISTS (SELECT 1)").contains("subqueries"));
        assert!(refused("other.title").contains("another table"));
        assert!(refused("nope").contains("no column \"nope\""));
        assert!(refused("count(*)").contains("aggregate"));
        assert!(refused("load_extension('x')").contains("not allowed"));
        assert!(refused("my_udf(1)").contains("not allowed"));
        assert!(refused("title; DROP TABLE events").contains("statement"));
        assert!(refused("title -- c").contains("comments"));
        assert!(refused("substr(title)").contains("2 to 3 arguments"));
        assert!(refused("json_extract(title, title)").contains("string literal"));
        assert!(refused("'abc").contains("unclosed"));
        assert!(refused("1 +").contains("ends too early"));
        assert!(refused("title title").contains("after the expression"));
        assert!(refused(&"(".repeat(40)).contains("nested deeper"));
        assert!(refused(&"1+".repeat(3000)).contains("longer than"));
    }

    #[test]
    fn measures_parse() {
        let t = events();
        assert_eq!(parse_measure("count(*)", &t).unwrap(), Measure::CountRows);
        assert_eq!(
            parse_measure("SUM(duration)", &t).unwrap(),
            Measure::Sum(Expr::Column(3))
        );
        assert!(parse_measure("median(duration)", &t).is_err());
        assert!(parse_measure("count(DISTINCT owner)", &t).is_err());
        assert!(parse_measure("sum(duration) + 1", &t).is_err());
    }

    #[test]
    fn kinds_convert_filters() {
        let t = events();
        assert_eq!(
            parse("substr(starts_at, 1, 7)", &t).unwrap().kind(&t),
            Kind::Text
        );
        assert_eq!(parse("duration", &t).unwrap().kind(&t), Kind::Integer);
        assert_eq!(parse("duration / 60", &t).unwrap().kind(&t), Kind::Numeric);
    }
}
