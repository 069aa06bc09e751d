//! The client commands' arguments (`upload`, `get`, `list`, `watch`, `template`, `errors`,
//! `cancel`, `revert`, `users`, `invite`): each names what its request needs, and shares the
//! server, account and connection flags (`ServerArgs`).

use std::path::PathBuf;

use clap::Args;

use super::{OnConflict, ServerArgs, limit};

/// `bulk-import upload FILE`: the file, and the import's options that `ImportMetadata`
/// carries (its id, dry run, conflict policy, the import it retries).
#[derive(Debug, Clone, Args)]
pub struct UploadArgs {
    /// The server, the account and how to connect.
    #[command(flatten)]
    pub target: ServerArgs,
    /// Your id for the import, so that a retry is recognised (default: one is made).
    #[arg(long, default_value = "")]
    pub import_id: String,
    /// Bytes per chunk message.
    #[arg(long, default_value_t = 256 * 1024)]
    pub chunk_size: usize,
    /// Check the file as an import would, writing no user.
    #[arg(long)]
    pub dry_run: bool,
    /// Create the users without inviting them: `bulk-import invite --import ID` invites them
    /// later (INVITATION_POLICY_HOLD). By default they are invited when the import commits.
    #[arg(long)]
    pub hold_invitations: bool,
    /// What happens to a row whose email already belongs to a user of the account.
    #[arg(long, value_enum, default_value_t = OnConflict::Error)]
    pub on_conflict: OnConflict,
    /// The import whose failed rows this file corrects (its error report, fixed).
    #[arg(long)]
    pub retry_of: Option<String>,
    /// Resumable: when the connection breaks, reconnect and send the rest of the file from
    /// where the server stored it, instead of failing (retried for up to 3 minutes).
    #[arg(long)]
    pub resumable: bool,
    /// The CSV file.
    pub file: PathBuf,
}

/// `bulk-import resume --import ID FILE`: a waiting import's upload, resumed by hand.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// The server, the account and how to connect.
    #[command(flatten)]
    pub target: ServerArgs,
    /// The import to resume: one uploaded with --resumable whose stream broke.
    #[arg(long = "import")]
    pub import_id: String,
    /// Bytes per chunk message.
    #[arg(long, default_value_t = 256 * 1024)]
    pub chunk_size: usize,
    /// The same CSV file as the first upload's.
    pub file: PathBuf,
}

/// `bulk-import get ID`: one import and its first row errors.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The server, the account and how to connect.
    #[command(flatten)]
    pub target: ServerArgs,
    /// Row errors to show at the most.
    #[arg(long, default_value_t = 100)]
    pub errors: u32,
    /// The import to show, by the id `upload` printed.
    pub import_id: String,
}

/// A command on one import.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The server, the account and how to connect.
    #[command(flatten)]
    pub target: ServerArgs,
    /// The import, by the id `upload` printed.
    pub import_id: String,
}

/// `bulk-import users`: the account's users, all of them or one import's.
#[derive(Debug, Clone, Args)]
pub struct UsersArgs {
    /// The server, the account and how to connect.
    #[command(flatten)]
    pub target: ServerArgs,
    /// Only the users this import created.
    #[arg(long = "import")]
    pub import_id: Option<String>,
    /// Users to show at the most (all of them when not given).
    #[arg(long)]
    pub limit: Option<u64>,
}

/// `bulk-import list`: the account's most recent imports.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// The server, the account and how to connect.
    #[command(flatten)]
    pub target: ServerArgs,
    /// Imports to show at the most, newest first (pages of up to 1000 are followed).
    #[arg(long, default_value_t = 50, value_parser = limit::at_least_one::<usize>)]
    pub limit: usize,
}

/// `bulk-import watch ID`: follow one import to its end.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The server, the account and how to connect.
    #[command(flatten)]
    pub target: ServerArgs,
    /// The import to follow, by the id `upload` printed.
    pub import_id: String,
}

/// `bulk-import template`: the CSV template, built into the binary; no server, no account.
#[derive(Debug, Clone, Args)]
pub struct TemplateArgs {
    /// Not needed: the template is built into the binary, the same as the server's. Accepted
    /// so that older scripts keep working.
    #[arg(long, env = "BULK_IMPORT_SERVER", hide = true)]
    pub server: Option<String>,
    /// Save to this file instead of printing.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Print the template and its columns as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `bulk-import invite`: invite an import's held users, or users by address.
#[derive(Debug, Clone, Args)]
pub struct InviteArgs {
    /// The server, the account and how to connect.
    #[command(flatten)]
    pub target: ServerArgs,
    /// Invite the users this import created and held (`upload --hold-invitations`).
    #[arg(long = "import")]
    pub import_id: Option<String>,
    /// Invite the user with this address (repeat the flag for several).
    #[arg(long = "email")]
    pub emails: Vec<String>,
    /// Invite users who were invited before again too.
    #[arg(long)]
    pub resend: bool,
}

/// `bulk-import events`: the account's user event feed.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// The server, the account and how to connect.
    #[command(flatten)]
    pub target: ServerArgs,
    /// Go on after this event's cursor (as printed first on each line), rather than from the
    /// oldest event kept.
    #[arg(long)]
    pub after: Option<String>,
    /// Keep following new events until interrupted, rather than stopping once caught up.
    #[arg(long)]
    pub follow: bool,
}
