//! The crate's one error type: every cause a load, an inventory or a test run can fail with.
//!
//! Decisions never return an error: anything that goes wrong while deciding is a
//! [`Decision::Deny`](crate::Decision::Deny) with a reason code. These variants are for loading a
//! policy set (refused as a whole, so the caller keeps its last good set) and for policy tests.

use std::path::PathBuf;

/// Why a policy set, an inventory or a policy test file was refused.
///
/// Load errors name the file (as given to [`Pdp::from_sources`](crate::Pdp::from_sources), or
/// the file name inside the directory for [`Pdp::load`](crate::Pdp::load)), the 1-based line and
/// Cedar's own message.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy directory (or a test directory) could not be listed.
    #[error("cannot read directory {}: {source}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A policy, schema or test file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file name in the directory, or a file's content, is not UTF-8.
    #[error("{}: not UTF-8", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// Two sources were given under the same file name.
    #[error("{file}: given twice")]
    DuplicateFile {
        /// The file name.
        file: String,
    },
    /// Cedar could not parse a policy file.
    #[error("{file}:{line}: {message}")]
    Parse {
        /// The policy file.
        file: String,
        /// 1-based line of the first error.
        line: usize,
        /// Cedar's message (all errors, `; `-separated).
        message: String,
    },
    /// Cedar could not parse the schema.
    #[error("{file}:{line}: schema: {message}")]
    Schema {
        /// `schema.cedarschema`, or `<built-in>` for [`SCHEMA`](crate::SCHEMA).
        file: String,
        /// 1-based line (1 when Cedar gives no span).
        line: usize,
        /// Cedar's message.
        message: String,
    },
    /// A policy failed strict validation against the schema.
    #[error("{file}:{line}: policy {policy:?}: {message}{}", more_suffix(*more))]
    Validation {
        /// The policy file.
        file: String,
        /// 1-based line of the offending expression.
        line: usize,
        /// The policy's `@id`.
        policy: String,
        /// Cedar's message.
        message: String,
        /// How many further validation errors the set has.
        more: usize,
    },
    /// A policy has no `@id("…")` annotation, or an empty one.
    #[error("{file}:{line}: policy has no @id annotation")]
    MissingId {
        /// The policy file.
        file: String,
        /// 1-based line where the policy starts.
        line: usize,
    },
    /// Two policies share one `@id`.
    #[error("duplicate @id {id:?}: {first_file}:{first_line} and {second_file}:{second_line}")]
    DuplicateId {
        /// The id.
        id: String,
        /// Where it first appears.
        first_file: String,
        /// 1-based line of the first.
        first_line: usize,
        /// Where it appears again.
        second_file: String,
        /// 1-based line of the second.
        second_line: usize,
    },
    /// A file holds a template (`?principal`/`?resource`); Firebreak links none.
    #[error("{file}:{line}: templates are not supported")]
    Template {
        /// The policy file.
        file: String,
        /// 1-based line where the template starts.
        line: usize,
    },
    /// An `@approval` annotation with a value other than `"required"`, or on a `forbid`.
    #[error(
        "{file}:{line}: policy {policy:?}: @approval({value:?}) is not understood (only @approval(\"required\") on a permit)"
    )]
    ApprovalAnnotation {
        /// The policy file.
        file: String,
        /// 1-based line where the policy starts.
        line: usize,
        /// The policy's `@id`.
        policy: String,
        /// The annotation value as written.
        value: String,
    },
    /// The inventory names one agent, target or approver twice.
    #[error("inventory: {kind} {id:?} listed twice")]
    DuplicateInventory {
        /// `agent`, `target` or `approver`.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// The inventory's entities do not conform to the schema (a custom schema that disagrees
    /// with Firebreak's entity model).
    #[error("inventory does not fit the schema: {message}")]
    InventoryMismatch {
        /// Cedar's message.
        message: String,
    },
    /// An action name that is none of Firebreak's seven.
    #[error("unknown action {action:?}")]
    UnknownAction {
        /// The name as given.
        action: String,
    },
    /// A policy test file is not valid TOML or does not have the documented shape.
    #[error("{file}:{line}: {message}")]
    TestFile {
        /// The test file.
        file: String,
        /// 1-based line.
        line: usize,
        /// The TOML parser's message.
        message: String,
    },
    /// A test case names something that cannot be a request (unknown action, a tool without
    /// `/`, a host without a port, an unknown expected decision…).
    #[error("{file}:{line}: case {case:?}: {problem}")]
    TestCase {
        /// The test file.
        file: String,
        /// 1-based line of the case.
        line: usize,
        /// The case's name.
        case: String,
        /// What is wrong.
        problem: String,
    },
    /// A test directory holds no `*.test.toml` case at all: zero cases prove nothing.
    #[error("{}: no *.test.toml case found", dir.display())]
    NoTestCases {
        /// The directory.
        dir: PathBuf,
    },
}

fn more_suffix(more: usize) -> String {
    if more == 0 {
        String::new()
    } else {
        format!(" (and {more} more)")
    }
}
