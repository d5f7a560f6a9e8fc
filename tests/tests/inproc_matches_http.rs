//! The in-process witness (`pdb_tests::inproc`) answers as the witness over HTTP does:
//! the same calls, made through the client's `Witness` trait on a real witness process
//! (`transport::Remote`) and on the library in this process, give the same answers —
//! rejections equal in status, code, detail and problem document, certificates at the
//! same seq and head, pages of the same commits. What the fast tests conclude from
//! the in-process witness therefore holds for the real one.

use std::time::Duration;

use pdb_client::transport::{Remote, Submission, Witness};
use pdb_client::Rejection;
use pdb_tests::inproc::InProcess;
use pdb_tests::witness::{record, WitnessClient, WitnessProc};

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, a TEXT, b TEXT)";

/// An answer reduced to what must agree between the two witnesses (signatures, keys and
/// times differ by nature).
fn gist<T>(
    r: Result<Result<T, Rejection>, pdb_client::TransportError>,
    ok: impl Fn(&T) -> String,
) -> String {
    match r {
        Ok(Ok(v)) => format!("ok {}", ok(&v)),
        Ok(Err(rej)) => format!(
            "rejected {} {} {:?} {}",
            rej.status, rej.code, rej.detail, rej.body
        ),
        Err(e) => format!("transport error {e}"),
    }
}

/// The same run of calls against `w`, each answer as a line.
fn script(w: &dyn Witness, missing: &dyn Witness) -> Vec<String> {
    let mut out = Vec::new();
    out.push(gist(missing.group_info(), |i| format!("{:?}", i.head)));
    let info = w.group_info().unwrap().unwrap();
    out.push(format!(
        "info {:?} {:?} {}",
        info.head, info.schema_hash, info.ddl
    ));
    let genesis = info.head;
    let insert = record(DDL, "", "INSERT INTO notes VALUES (1, 'x', 'y')");
    let submit = |cs: &[u8], base, key: &str, ff: bool, schema| {
        w.push(&Submission {
            changeset: cs,
            base,
            idempotency_key: key,
            schema_hash: schema,
            client: Some("dev"),
            meta: None,
            fast_forward: ff,
        })
    };
    let cert = |c: &(pdb_client::cert::Certificate, bool)| {
        format!(
            "seq {} head {:?} state {:?} duplicate {}",
            c.0.seq, c.0.head, c.0.state, c.1
        )
    };
    let first = submit(&insert, genesis, "k1", false, info.schema_hash)
        .unwrap()
        .unwrap();
    out.push(cert(&first));
    let one = (first.0.seq, first.0.head);
    // A retry: the original certificate.
    out.push(gist(
        submit(&insert, genesis, "k1", false, info.schema_hash),
        cert,
    ));
    // Another changeset under the same key.
    let update = record(
        DDL,
        "INSERT INTO notes VALUES (1, 'x', 'y')",
        "UPDATE notes SET a = 'r' WHERE id = 1",
    );
    out.push(gist(
        submit(&update, one, "k1", false, info.schema_hash),
        cert,
    ));
    // fast-forward on a stale base.
    out.push(gist(
        submit(&update, genesis, "k2", true, info.schema_hash),
        cert,
    ));
    // Another schema.
    out.push(gist(submit(&update, one, "k3", false, [7; 32]), cert));
    // A TEXT key in a rowid table.
    let mut forged = vec![b'T', 3, 1, 0, 0];
    forged.extend_from_slice(b"notes\0");
    forged.extend_from_slice(&[18, 0, 3, 1, b'7', 3, 1, b'x', 5]);
    out.push(gist(
        submit(&forged, one, "k4", false, info.schema_hash),
        cert,
    ));
    // A base that is no head of the group.
    out.push(gist(
        submit(&update, (1, [9; 32]), "k5", false, info.schema_hash),
        cert,
    ));
    // A malformed header value.
    out.push(gist(
        submit(&update, one, "no spaces allowed", false, info.schema_hash),
        cert,
    ));
    // Accepted on the head, then one that conflicts with it from the older base.
    out.push(gist(
        submit(&update, one, "k6", false, info.schema_hash),
        cert,
    ));
    let other = record(
        DDL,
        "INSERT INTO notes VALUES (1, 'x', 'y')",
        "UPDATE notes SET a = 'other' WHERE id = 1",
    );
    out.push(gist(
        submit(&other, one, "k7", false, info.schema_hash),
        cert,
    ));
    // Disjoint columns from the older base merge under rebase-if-clean.
    let disjoint = record(
        DDL,
        "INSERT INTO notes VALUES (1, 'x', 'y')",
        "UPDATE notes SET b = 'b' WHERE id = 1",
    );
    out.push(gist(
        submit(&disjoint, one, "k8", false, info.schema_hash),
        cert,
    ));
    let page = |p: &pdb_client::transport::Page| {
        let commits: Vec<_> = p
            .commits
            .iter()
            .map(|c| {
                (
                    c.cert.seq,
                    c.cert.idempotency_key.clone(),
                    c.changeset.clone(),
                )
            })
            .collect();
        format!("head {:?} commits {commits:?}", p.head)
    };
    out.push(gist(w.pull(0, 1000, Duration::ZERO), page));
    out.push(gist(w.pull(1, 1, Duration::ZERO), page));
    out.push(gist(w.pull(3, 10, Duration::ZERO), page));
    out.push(gist(w.pull(0, 0, Duration::ZERO), page));
    out.push(gist(missing.pull(0, 10, Duration::ZERO), page));
    let by_key =
        |c: &Option<pdb_client::cert::Certificate>| format!("{:?}", c.as_ref().map(|c| c.seq));
    out.push(gist(w.certificate("k6"), by_key));
    out.push(gist(w.certificate("nobody"), by_key));
    let manifest = |m: &Option<pdb_client::snapshot::Manifest>| {
        format!(
            "{:?}",
            m.as_ref().map(|m| (m.seq, m.head, m.size, m.blake3))
        )
    };
    out.push(gist(w.latest_snapshot(), manifest));
    out.push(gist(w.snapshot_at(99), manifest));
    let at = w.snapshot_at(2).unwrap().unwrap();
    out.push(manifest(&at));
    let m = at.unwrap();
    let read = |d: &pdb_client::transport::Download| format!("start {}", d.start);
    out.push(gist(w.download(&m.object_path(), 0), read));
    out.push(gist(w.download(&m.object_path(), m.size + 5), read));
    let mut d = w.download(&m.object_path(), 100).unwrap().unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut d.body, &mut rest).unwrap();
    out.push(format!("from 100: start {} {} bytes", d.start, rest.len()));
    out.push(gist(w.latest_snapshot(), manifest));
    out
}

#[test]
fn the_in_process_witness_answers_as_the_http_witness() {
    let dir = std::env::temp_dir().join(format!("pdb-inproc-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let proc = WitnessProc::start(&dir.join("witness"));
    assert_eq!(proc.admin_client().create_group("g", DDL).status, 201);
    let token = proc.token("dev", "g", "write", 600);
    // The token also reads "nope", which does not exist: 404 there, as in-process.
    let token_missing = proc.token("dev", "nope", "write", 600);
    let http = Remote::new(&proc.url, "g", &token).unwrap();
    let http_missing = Remote::new(&proc.url, "nope", &token_missing).unwrap();
    let over_http = script(&http, &http_missing);

    let local = InProcess::start("matches-http");
    local.create_group("g", DDL);
    let in_process = script(&local.link("g"), &local.link("nope"));

    let diff: Vec<String> = over_http
        .iter()
        .zip(&in_process)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| format!("call {i}:\n  http:       {a}\n  in-process: {b}"))
        .collect();
    assert_eq!(over_http.len(), in_process.len());
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    // Not all answers alike by accident: the script met each kind it is about.
    let all = over_http.join("\n");
    for code in [
        "not_found",
        "idempotency_conflict",
        "stale_base",
        "schema_mismatch",
        "invalid_changeset",
        "bad_request",
        "conflict",
        "range_not_satisfiable",
    ] {
        assert!(all.contains(&format!(" {code} ")), "no {code} in:\n{all}");
    }
    assert!(all.contains("duplicate true"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}
