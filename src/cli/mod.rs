//! The service's own client: manual imports from a shell, without proto files or grpcurl.
//!
//! - People get the help page's words (`Completed - Partial: 196,027 imported, 3,973 failed`),
//!   a progress bar on a terminal, and row errors as a table (`show`);
//! - scripts get `--json` (`json`) and exit codes: 0 for Completed - Success and Nothing to
//!   Import (and any other command that worked), 2 for Completed - Partial, 1 for Error -
//!   Parsing, Error - Unknown, Cancelled and any error;
//! - an error is one line: the gRPC code's name and the server's message, or what kept the
//!   client from the server and how to point it elsewhere.

mod json;
mod show;

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::{
    ConnectionArgs, GetArgs, ImportArgs, ListArgs, ServerArgs, TemplateArgs, UploadArgs, UsersArgs,
    WatchArgs,
};
use crate::domain::{ImportId, ImportType};
use crate::proto::import_service_client::ImportServiceClient;
use crate::proto::{self, ImportStatus, upload_import_request::Payload};

/// Row errors shown after an upload.
const FIRST_ERRORS: i32 = 10;

/// How a command ended, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what it was asked.
    Done,
    /// It followed an import to this status.
    Ended(i32),
}

impl Outcome {
    /// 0 for Completed - Success and Nothing to Import, 2 for Completed - Partial, 1 for
    /// Error - Parsing, Error - Unknown and Cancelled.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::Ended(status) => match ImportStatus::try_from(status) {
                Ok(ImportStatus::CompletedSuccess | ImportStatus::CompletedNothingToImport) => 0,
                Ok(ImportStatus::CompletedPartial) => 2,
                _ => 1,
            },
        }
    }
}

/// What went wrong, in one line (printed after `error: `; exit code 1).
#[derive(Debug)]
pub struct CliError(String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<tonic::Status> for CliError {
    /// `NOT_FOUND: import 'x' was not found in account 'acme'`.
    fn from(status: tonic::Status) -> Self {
        let message = status.message().replace('\n', " ");
        CliError(format!("{}: {message}", code_name(status.code())))
    }
}

impl CliError {
    fn io(what: impl std::fmt::Display, error: std::io::Error) -> Self {
        CliError(format!("{what}: {}", plain(&error)))
    }
}

pub type CliResult = Result<Outcome, CliError>;

/// The gRPC code as the protocol names it: `FAILED_PRECONDITION`.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error's innermost cause in plain words: `connection refused`, not
/// `transport error: ... Connection refused (os error 111)`.
fn plain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let text = innermost.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

/// The generated client, with the bearer token on every call.
pub type Client = ImportServiceClient<InterceptedService<Channel, Bearer>>;

/// Puts `authorization: Bearer <token>` on every call, when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// `None` when the token is not printable ASCII, which no token of a tokens file is.
    pub fn new(token: Option<&str>) -> Option<Self> {
        match token {
            Some(token) => format!("Bearer {token}")
                .parse()
                .ok()
                .map(|v| Self(Some(v))),
            None => Some(Self(None)),
        }
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Connects to `server`: with TLS when a CA is given or the URL is `https://`, with a client
/// certificate when one is given, and with the bearer token when there is one.
pub async fn connect(server: &str, connection: &ConnectionArgs) -> Result<Client, CliError> {
    let mut endpoint = Endpoint::from_shared(server.to_owned()).map_err(|e| {
        CliError(format!(
            "--server '{server}' is not a URL ({}); give one like http://127.0.0.1:50051",
            plain(&e)
        ))
    })?;
    if connection.tls_ca.is_some() || server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &connection.tls_ca {
            let pem = std::fs::read(ca)
                .map_err(|e| CliError::io(format!("cannot read {}", ca.display()), e))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&connection.tls_cert, &connection.tls_key) {
            let read = |path: &std::path::Path| {
                std::fs::read(path)
                    .map_err(|e| CliError::io(format!("cannot read {}", path.display()), e))
            };
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| CliError(format!("TLS: {}", plain(&e))))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        CliError(format!(
            "cannot reach {server}: {}; is the server running? (--server or \
             BULK_IMPORT_SERVER)",
            plain(&e)
        ))
    })?;
    let bearer = Bearer::new(connection.token.as_deref())
        .ok_or_else(|| CliError("the token must be printable ASCII".to_owned()))?;
    Ok(ImportServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(64 * 1024 * 1024))
}

async fn client(target: &ServerArgs) -> Result<Client, CliError> {
    connect(&target.server, &target.connection).await
}

/// Streams the file in chunks as it is read (memory stays flat), then the finish message with
/// the size and SHA-256, so the server can tell a truncated upload. On a terminal, a progress
/// bar on stderr shows the bytes sent and the rows the server processed.
pub async fn upload(args: UploadArgs) -> CliResult {
    let path = args.file.clone();
    let mut file = std::fs::File::open(&path)
        .map_err(|e| CliError::io(format!("cannot read {}", path.display()), e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut client = client(&args.target).await?;
    let filename = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Known before the upload, so that its progress can be followed.
    let import_id = match args.import_id.as_str() {
        "" => ImportId::generate().to_string(),
        id => id.to_owned(),
    };
    let bar = (!args.target.json && std::io::stderr().is_terminal()).then(|| progress_bar(size));
    let (tx, rx) = mpsc::channel(4);
    tx.send(request(Payload::Metadata(proto::ImportMetadata {
        account_id: args.target.account.clone(),
        r#type: proto::ImportType::Users as i32,
        filename,
        import_id: import_id.clone(),
        validate_only: args.dry_run,
        on_conflict: args.on_conflict.proto() as i32,
        retry_of_import_id: args.retry_of.clone().unwrap_or_default(),
    })))
    .await
    .map_err(|_| CliError("the upload stopped before it started".to_owned()))?;
    let chunk_size = args.chunk_size.max(1);
    let sent = bar.clone();
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let mut buf = vec![0u8; chunk_size];
            let n = read_full(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            hasher.update(&buf);
            size += n as u64;
            if tx
                .blocking_send(request(Payload::Chunk(buf.into())))
                .is_err()
            {
                return Ok(());
            }
            if let Some(bar) = &sent {
                bar.inc(n as u64);
            }
        }
        let _ = tx.blocking_send(request(Payload::Finish(proto::UploadFinish {
            size_bytes: Some(size as i64),
            sha256: hex::encode(hasher.finalize()),
        })));
        Ok(())
    });
    let follower = bar.clone().map(|bar| {
        tokio::spawn(follow_rows(
            client.clone(),
            args.target.account.clone(),
            import_id.clone(),
            bar,
        ))
    });
    let response = client.upload_import(ReceiverStream::new(rx)).await;
    if let Some(follower) = follower {
        follower.abort();
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let read = reader
        .await
        .map_err(|e| CliError(format!("the file reader failed: {e}")))?;
    let import = response?.into_inner().import.unwrap_or_default();
    read.map_err(|e| CliError::io(format!("cannot read {}", path.display()), e))?;
    if args.target.json {
        json::print(&json::import(&import));
    } else {
        println!("{}", show::outcome(&import));
        println!("import_id: {}", import.import_id);
        if !import.error_message.is_empty() {
            println!("{}", import.error_message);
        }
        if import.rows_failed > 0 {
            print_first_errors(&mut client, &args.target.account, &import).await?;
        }
    }
    Ok(Outcome::Ended(import.status))
}

fn progress_bar(size: u64) -> ProgressBar {
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec}, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Shows the rows the server has processed, from `WatchImport`, once the import exists.
async fn follow_rows(mut client: Client, account: String, import_id: String, bar: ProgressBar) {
    loop {
        let watch = client
            .watch_import(proto::WatchImportRequest {
                account_id: account.clone(),
                import_id: import_id.clone(),
            })
            .await;
        match watch {
            Ok(updates) => {
                let mut updates = updates.into_inner();
                while let Some(Ok(update)) = updates.next().await {
                    let import = update.import.unwrap_or_default();
                    bar.set_message(format!("{} rows", show::count(import.rows_processed)));
                }
                return;
            }
            // Not created yet: the metadata is on its way.
            Err(status) if status.code() == tonic::Code::NotFound => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => return,
        }
    }
}

/// The first row errors of an import as a table, and where to find the rest.
async fn print_first_errors(
    client: &mut Client,
    account: &str,
    import: &proto::Import,
) -> Result<(), CliError> {
    let page = client
        .get_import(proto::GetImportRequest {
            account_id: account.to_owned(),
            import_id: import.import_id.clone(),
            errors_page_size: FIRST_ERRORS,
            errors_page_token: String::new(),
        })
        .await?
        .into_inner();
    if page.errors.is_empty() {
        return Ok(());
    }
    println!();
    println!("{}", show::row_errors(&page.errors));
    if !page.next_errors_page_token.is_empty() {
        println!(
            "... more: `bulk-import get --account {account} {}`, or the rows to fix: \
             `bulk-import errors --account {account} {} > fix.csv`",
            import.import_id, import.import_id
        );
    }
    Ok(())
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn request(payload: Payload) -> proto::UploadImportRequest {
    proto::UploadImportRequest {
        payload: Some(payload),
    }
}

pub async fn get(args: GetArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let mut token = String::new();
    let mut errors = Vec::new();
    let mut import = None;
    loop {
        let page = client
            .get_import(proto::GetImportRequest {
                account_id: args.target.account.clone(),
                import_id: args.import_id.clone(),
                // 0 would mean the server's default page; `--errors 0` shows the import alone.
                errors_page_size: (args.errors as usize - errors.len()).clamp(1, 1000) as i32,
                errors_page_token: token,
            })
            .await?
            .into_inner();
        import.get_or_insert(page.import.unwrap_or_default());
        let room = args.errors as usize - errors.len();
        errors.extend(page.errors.into_iter().take(room));
        token = page.next_errors_page_token;
        if token.is_empty() || errors.len() >= args.errors as usize {
            break;
        }
    }
    let import = import.unwrap_or_default();
    if args.target.json {
        let errors: Vec<_> = errors.iter().map(json::row_error).collect();
        json::print(&json!({ "import": json::import(&import), "errors": errors }));
    } else {
        println!("{}", show::import(&import));
        if !errors.is_empty() {
            println!();
            println!("{}", show::row_errors(&errors));
        }
    }
    Ok(Outcome::Ended(import.status))
}

pub async fn list(args: ListArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let page = client
        .list_imports(proto::ListImportsRequest {
            account_id: args.target.account.clone(),
            page_size: args.limit,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    if args.target.json {
        let imports: Vec<_> = page.imports.iter().map(json::import).collect();
        json::print(&json!({ "imports": imports }));
        return Ok(Outcome::Done);
    }
    println!(
        "{:<38} {:<30} {:>11} {:>11}  FILENAME",
        "IMPORT_ID", "STATUS", "IMPORTED", "FAILED"
    );
    for import in &page.imports {
        let mut status = show::status_words(import.status).to_owned();
        if import.validate_only {
            status.push_str(" (dry run)");
        }
        println!(
            "{:<38} {:<30} {:>11} {:>11}  {}",
            import.import_id,
            status,
            show::count(import.rows_imported),
            show::count(import.rows_failed),
            import.filename
        );
    }
    Ok(Outcome::Done)
}

pub async fn watch(args: WatchArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let mut updates = client
        .watch_import(proto::WatchImportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(update) = updates.next().await {
        let import = update?.import.unwrap_or_default();
        if args.target.json {
            json::print(&json::import(&import));
        } else {
            println!(
                "{} bytes, {} rows: {}",
                show::count(import.bytes_received),
                show::count(import.rows_processed),
                show::outcome(&import)
            );
        }
        last = Some(import.status);
    }
    match last {
        Some(status) => Ok(Outcome::Ended(status)),
        None => Err(CliError("the watch ended without a word".to_owned())),
    }
}

/// The template, from the binary itself (the same as the server's): no server needed.
pub async fn template(args: TemplateArgs) -> CliResult {
    let template = crate::import::template::template(ImportType::Users);
    if args.json {
        let columns: Vec<_> = template
            .columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "required": c.required,
                    "description": c.description,
                    "example": c.example,
                    "aliases": c.aliases,
                })
            })
            .collect();
        json::print(&json!({
            "filename": template.filename,
            "csv": template.csv,
            "columns": columns,
        }));
        return Ok(Outcome::Done);
    }
    match args.output {
        Some(path) => std::fs::write(&path, &template.csv)
            .map_err(|e| CliError::io(format!("cannot write {}", path.display()), e))?,
        None => print!("{}", template.csv),
    }
    Ok(Outcome::Done)
}

/// Writes the fix-up file to standard output as it arrives; with `--json`, its rows as
/// objects keyed by its header.
pub async fn errors(args: ImportArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let mut chunks = client
        .get_import_error_report(proto::GetImportErrorReportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner();
    if args.target.json {
        let mut report = Vec::new();
        while let Some(chunk) = chunks.next().await {
            report.extend_from_slice(&chunk?.chunk);
        }
        let text = report.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&report);
        let mut reader = csv::Reader::from_reader(text);
        let header = reader
            .headers()
            .map_err(|e| CliError(format!("the report is not CSV: {e}")))?
            .clone();
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| CliError(format!("the report is not CSV: {e}")))?;
            let row: serde_json::Map<String, serde_json::Value> = header
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect();
            rows.push(serde_json::Value::Object(row));
        }
        json::print(&json!({ "rows": rows }));
        return Ok(Outcome::Done);
    }
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = chunks.next().await {
        out.write_all(&chunk?.chunk)
            .map_err(|e| CliError::io("cannot write the report", e))?;
    }
    out.flush()
        .map_err(|e| CliError::io("cannot write the report", e))?;
    Ok(Outcome::Done)
}

pub async fn cancel(args: ImportArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let import = client
        .cancel_import(proto::CancelImportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner()
        .import
        .unwrap_or_default();
    if args.target.json {
        json::print(&json::import(&import));
    } else {
        println!("{}", show::import(&import));
    }
    Ok(Outcome::Done)
}

pub async fn revert(args: ImportArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let reverted = client
        .revert_import(proto::RevertImportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner();
    let import = reverted.import.unwrap_or_default();
    if args.target.json {
        json::print(&json!({
            "import": json::import(&import),
            "users_removed": reverted.users_removed,
            "message": reverted.message,
        }));
    } else {
        println!("{}", reverted.message);
        println!("users removed: {}", show::count(reverted.users_removed));
        println!("{}", show::import(&import));
    }
    Ok(Outcome::Done)
}

/// Prints the users, following the pages: a table, or with `--json` one document.
pub async fn users(args: UsersArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let mut token = String::new();
    let mut users = Vec::new();
    let limit = args.limit.unwrap_or(u64::MAX);
    while (users.len() as u64) < limit {
        let page = client
            .list_users(proto::ListUsersRequest {
                account_id: args.target.account.clone(),
                import_id: args.import_id.clone().unwrap_or_default(),
                page_size: (limit - users.len() as u64).min(1000) as i32,
                page_token: token,
            })
            .await?
            .into_inner();
        let room = (limit - users.len() as u64) as usize;
        users.extend(page.users.into_iter().take(room));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    if args.target.json {
        let users: Vec<_> = users.iter().map(json::user).collect();
        json::print(&json!({ "users": users }));
        return Ok(Outcome::Done);
    }
    println!(
        "{:<40} {:<8} {:<20} {:<20} {:<16} IMPORT_ID",
        "EMAIL", "ROLE", "FIRST_NAME", "LAST_NAME", "EXTERNAL_ID"
    );
    for user in &users {
        let role = proto::UserRole::try_from(user.role)
            .map(|r| {
                r.as_str_name()
                    .trim_start_matches("USER_ROLE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        println!(
            "{:<40} {:<8} {:<20} {:<20} {:<16} {}",
            user.email, role, user.first_name, user.last_name, user.external_id, user.import_id
        );
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_status() {
        let code = |status: ImportStatus| Outcome::Ended(status as i32).exit_code();
        assert_eq!(code(ImportStatus::CompletedSuccess), 0);
        assert_eq!(code(ImportStatus::CompletedNothingToImport), 0);
        assert_eq!(code(ImportStatus::CompletedPartial), 2);
        assert_eq!(code(ImportStatus::ErrorParsing), 1);
        assert_eq!(code(ImportStatus::ErrorUnknown), 1);
        assert_eq!(code(ImportStatus::Cancelled), 1);
        assert_eq!(Outcome::Done.exit_code(), 0);
    }

    #[test]
    fn an_rpc_error_is_one_line() {
        let error = CliError::from(tonic::Status::failed_precondition("import 'x' ended\nlong"));
        assert_eq!(
            error.to_string(),
            "FAILED_PRECONDITION: import 'x' ended long"
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(plain(&io), "connection refused");
    }
}
