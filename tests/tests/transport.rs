//! The device side of the witness's API (`pdb_client::transport`) against a real
//! `pdb-witness`: what each answer turns into.

use std::time::{Duration, Instant};

use pdb_client::cert::genesis;
use pdb_client::history::verify_chain;
use pdb_client::transport::{Remote, Submission};
use pdb_client::TransportError;
use pdb_tests::witness::{record, WitnessClient, WitnessProc};

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)";

fn insert(id: i64) -> Vec<u8> {
    record(
        DDL,
        "",
        &format!("INSERT INTO notes VALUES ({id}, 'n{id}')"),
    )
}

#[test]
fn push_pull_and_every_kind_of_answer() {
    let dir = std::env::temp_dir().join(format!("pdb-transport-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let w = WitnessProc::start(&dir);
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    let token = w.token("dev", "g", "write", 600);
    let remote = Remote::new(&w.url, "g", &token).unwrap();

    let info = remote.group_info().unwrap().unwrap();
    assert_eq!(info.head, (0, genesis("g")));
    assert_eq!(info.witness_key, w.key);
    assert_eq!(info.ddl, DDL);

    let cs = insert(1);
    let sub = Submission {
        changeset: &cs,
        base: info.head,
        idempotency_key: "k1",
        schema_hash: info.schema_hash,
        client: Some("0123456789abcdef0123456789abcdef"),
        meta: Some(r#"{"device":"a"}"#),
        fast_forward: false,
    };
    let (cert, duplicate) = remote.push(&sub).unwrap().unwrap();
    assert!(!duplicate);
    cert.verify(&w.key, &cs).unwrap();
    let (again, duplicate) = remote.push(&sub).unwrap().unwrap();
    assert!(duplicate, "a retry gets the original certificate");
    assert_eq!(again, cert);

    // A rejection carries its code and the head to resync from.
    let stale = remote
        .push(&Submission {
            changeset: &insert(1),
            idempotency_key: "k2",
            ..sub.clone()
        })
        .unwrap()
        .unwrap_err();
    assert_eq!((stale.status, stale.code.as_str()), (409, "conflict"));
    assert_eq!(stale.head(), Some((1, cert.head)));
    let cs2 = insert(2);
    let (cert2, _) = remote
        .push(&Submission {
            changeset: &cs2,
            idempotency_key: "k3",
            ..sub.clone()
        })
        .unwrap()
        .unwrap();

    // Pull pages verify as a chain from genesis.
    let page = remote.pull(0, 10, Duration::ZERO).unwrap().unwrap();
    assert_eq!(page.head, (2, cert2.head));
    let run = page
        .commits
        .iter()
        .map(|p| (&p.cert, p.changeset.as_slice()));
    assert_eq!(
        verify_chain(&w.key, "g", (0, genesis("g")), run),
        Ok((2, cert2.head))
    );
    assert_eq!(page.commits[1].changeset, cs2);
    let one = remote.pull(1, 10, Duration::ZERO).unwrap().unwrap();
    assert_eq!(one.commits.len(), 1);

    // A long-poll returns as soon as a commit lands.
    let waiter = {
        let r = Remote::new(&w.url, "g", &token).unwrap();
        std::thread::spawn(move || {
            let t = Instant::now();
            (
                r.pull(2, 10, Duration::from_secs(20)).unwrap().unwrap(),
                t.elapsed(),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let cs3 = insert(3);
    remote
        .push(&Submission {
            changeset: &cs3,
            base: (2, cert2.head),
            idempotency_key: "k4",
            ..sub.clone()
        })
        .unwrap()
        .unwrap();
    let (page, took) = waiter.join().unwrap();
    assert_eq!(page.commits.len(), 1);
    assert!(took < Duration::from_secs(10));

    // Bad tokens and other groups are rejections, not transport errors.
    let anon = Remote::new(&w.url, "g", "not-a-token").unwrap();
    let r = anon.group_info().unwrap().unwrap_err();
    assert_eq!((r.status, r.code.as_str()), (401, "unauthorized"));
    let elsewhere = Remote::new(&w.url, "other", &token).unwrap();
    assert_eq!(
        elsewhere
            .pull(0, 1, Duration::ZERO)
            .unwrap()
            .unwrap_err()
            .code,
        "forbidden"
    );

    // A witness that is not there is a transport error.
    let url = w.url.clone();
    drop(w);
    let gone = Remote::new(&url, "g", &token).unwrap();
    assert!(matches!(
        gone.group_info(),
        Err(TransportError::Unreachable(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
