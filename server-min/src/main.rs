//! `pdb-witness`: orders each group's commits into one signed history.
//!
//! Only the command-line shape exists so far; the server itself is the next piece of
//! work (see README.md). Until then every command explains that and exits non-zero.

use std::process::ExitCode;

const USAGE: &str = "\
pdb-witness — orders each group's commits into one signed history

usage:
  pdb-witness serve --data DIR --listen ADDR
  pdb-witness keygen
  pdb-witness token --sub S --group G --role read|write|admin [--ttl SECONDS]
  pdb-witness backup DIR
  pdb-witness restore DIR

This build contains only the client extension (libpdb); the witness is not
implemented yet.";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(cmd) => {
            eprintln!("pdb-witness: '{cmd}' is not available yet\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
