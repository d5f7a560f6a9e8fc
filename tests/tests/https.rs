//! Sync over https: a witness behind a TLS terminator (socat with a certificate from
//! a private CA made by openssl), trusted through `PDB_CA_FILE`; and the clear error of
//! an https witness whose certificate is not trusted. In a test binary of its own
//! because it sets a process-wide environment variable.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pdb_tests::device::Device;
use pdb_tests::witness::{WitnessClient, WitnessProc};

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it; returns (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pdb test CA",
            "-keyout",
        ])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(p("key.pem"))
        .arg("-out")
        .arg(p("req.pem")));
    std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(p("req.pem"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("cert.pem")));
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// socat terminating TLS on a free port and forwarding to `target` (host:port).
struct Tls(Child);

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tls_proxy(cert: &Path, key: &Path, target: &str) -> (Tls, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            cert.display(),
            key.display()
        ))
        .arg(format!("TCP:{target}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (apt install socat)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "socat did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Tls(child), port)
}

#[test]
fn devices_sync_over_https_with_a_private_ca() {
    let dir = std::env::temp_dir().join(format!("pdb-https-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir);
    let w = WitnessProc::start(&dir.join("witness"));
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    let (_tls, port) = tls_proxy(&cert, &key, w.url.trim_start_matches("http://"));
    let url = format!("https://127.0.0.1:{port}");
    let device = |name: &str| {
        let token = w.token(name, "g", "write", 600);
        Device::new(&dir, name, DDL, &["notes"], &url, "g", &token, &w.key)
    };
    let a = device("a");
    let b = device("b");
    a.sql("INSERT INTO notes VALUES (1, 'over tls')");
    a.commit().unwrap();

    // Mozilla's roots do not include our CA: refused, with the reason.
    let err = a.try_json("SELECT pdb_sync()").unwrap_err();
    assert!(
        err.contains("unreachable") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(a.status()["pending"], 1);

    // Trusting the private CA: sync works, push and pull.
    std::env::set_var("PDB_CA_FILE", &ca);
    let s = a.sync();
    assert_eq!(s["pushed"], 1, "{s}");
    let s = b.sync();
    assert_eq!(s["pulled"], 1, "{s}");
    assert_eq!(a.dump("notes"), b.dump("notes"));
    assert_eq!(b.json("SELECT pdb_verify()")["state"], "ok");

    // A CA file that is not one is named in the error.
    std::env::set_var("PDB_CA_FILE", dir.join("ext.cnf"));
    let err = b.try_json("SELECT pdb_sync()").unwrap_err();
    assert!(
        err.contains("PDB_CA_FILE") && err.contains("no PEM certificate"),
        "{err}"
    );
}
