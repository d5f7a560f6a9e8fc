//! `backup` and `restore`: a consistent copy of a data directory, taken while the
//! witness serves.
//!
//! Replicas are copied before the history, each with `VACUUM INTO` (a read
//! transaction, so a consistent image). A replica only ever commits after the history
//! holds its commits, so the copied history is at or ahead of every copied replica,
//! and start-up replays the difference: the pair is consistent. Snapshot objects are
//! copied before both (a file is complete before its manifest is recorded, and never
//! changes), so every manifest in the copied history has its object.

use std::path::Path;

use rusqlite::Connection;

use crate::keys::{JWT_SECRET, WITNESS_KEY};

fn vacuum_into(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let conn = Connection::open_with_flags(src, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.execute("VACUUM INTO ?1", [dst.to_string_lossy()])?;
    Ok(())
}

/// Copies the finished objects of `from`'s object folder (not its `tmp`).
fn copy_objects(from: &Path, to: &Path) -> anyhow::Result<()> {
    let (src, dst) = (from.join("objects"), to.join("objects"));
    if !src.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&dst)?;
    for entry in std::fs::read_dir(&src)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn copy_keys(from: &Path, to: &Path) -> anyhow::Result<()> {
    for f in [WITNESS_KEY, JWT_SECRET] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f))?;
        }
    }
    Ok(())
}

/// Copies the data directory `data` into `dir`, which must not exist or be empty.
pub fn backup(data: &Path, dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        data.join("witness.db").exists(),
        "{} is not a witness data directory (no witness.db)",
        data.display()
    );
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!("{} is not empty", dir.display());
    }
    std::fs::create_dir_all(dir.join("groups"))?;
    copy_objects(data, dir)?;
    for entry in std::fs::read_dir(data.join("groups"))? {
        let name = entry?.file_name();
        if name.to_string_lossy().ends_with(".db") {
            vacuum_into(
                &data.join("groups").join(&name),
                &dir.join("groups").join(&name),
            )?;
        }
    }
    vacuum_into(&data.join("witness.db"), &dir.join("witness.db"))?;
    copy_keys(data, dir)?;
    Ok(())
}

/// Installs the backup `dir` as the data directory `data` (which must not hold a
/// witness unless `force`); the witness catches replicas up when it next starts.
pub fn restore(dir: &Path, data: &Path, force: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        dir.join("witness.db").exists(),
        "{} is not a backup (no witness.db)",
        dir.display()
    );
    if data.join("witness.db").exists() && !force {
        anyhow::bail!(
            "{} already holds a witness; stop it and pass --force to replace it",
            data.display()
        );
    }
    if data.exists() {
        std::fs::remove_dir_all(data)?;
    }
    std::fs::create_dir_all(data.join("groups"))?;
    for entry in std::fs::read_dir(dir.join("groups"))? {
        let name = entry?.file_name();
        std::fs::copy(
            dir.join("groups").join(&name),
            data.join("groups").join(&name),
        )?;
    }
    std::fs::copy(dir.join("witness.db"), data.join("witness.db"))?;
    copy_objects(dir, data)?;
    copy_keys(dir, data)?;
    Ok(())
}
