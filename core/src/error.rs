/// What reading a database's tables can fail with. The client folds these into its
/// own error's variants of the same names, so messages read the same from either crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite reported an error.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// A table cannot be tracked or read (names the table and why).
    #[error("{0}")]
    Table(String),
}
