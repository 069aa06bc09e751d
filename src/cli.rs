//! The service's own client: manual imports from a shell, without proto files or grpcurl.

use std::io::Read;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::{
    ConnectionArgs, GetArgs, ImportArgs, ListArgs, TemplateArgs, UploadArgs, UsersArgs, WatchArgs,
};
use crate::proto::import_service_client::ImportServiceClient;
use crate::proto::{self, upload_import_request::Payload};

pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

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
pub async fn connect(
    server: &str,
    connection: &ConnectionArgs,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let mut endpoint = Endpoint::from_shared(server.to_owned())?;
    if connection.tls_ca.is_some() || server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &connection.tls_ca {
            tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&connection.tls_cert, &connection.tls_key) {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert)?,
                std::fs::read(key)?,
            ));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await?;
    let bearer =
        Bearer::new(connection.token.as_deref()).ok_or("the token must be printable ASCII")?;
    Ok(ImportServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(64 * 1024 * 1024))
}

/// Streams the file in chunks as it is read (memory stays flat), then the finish message with
/// the size and SHA-256, so the server can tell a truncated upload.
pub async fn upload(args: UploadArgs) -> CliResult {
    let mut client = connect(&args.target.server, &args.target.connection).await?;
    let filename = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut file = std::fs::File::open(&args.file)?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(request(Payload::Metadata(proto::ImportMetadata {
        account_id: args.target.account.clone(),
        r#type: proto::ImportType::Users as i32,
        filename,
        import_id: args.import_id.clone(),
        validate_only: args.dry_run,
        on_conflict: args.on_conflict.proto() as i32,
        retry_of_import_id: args.retry_of.clone().unwrap_or_default(),
    })))
    .await?;
    let chunk_size = args.chunk_size.max(1);
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
        }
        let _ = tx.blocking_send(request(Payload::Finish(proto::UploadFinish {
            size_bytes: Some(size as i64),
            sha256: hex::encode(hasher.finalize()),
        })));
        Ok(())
    });
    let response = client.upload_import(ReceiverStream::new(rx)).await;
    reader.await??;
    let import = response?.into_inner().import.unwrap_or_default();
    print_import(&import);
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
    let mut client = connect(&args.target.server, &args.target.connection).await?;
    let mut token = String::new();
    let mut shown = 0u32;
    loop {
        let page = client
            .get_import(proto::GetImportRequest {
                account_id: args.target.account.clone(),
                import_id: args.import_id.clone(),
                // 0 would mean the server's default page; `--errors 0` shows the import alone.
                errors_page_size: (args.errors - shown).clamp(1, 1000) as i32,
                errors_page_token: token,
            })
            .await?
            .into_inner();
        if shown == 0 {
            print_import(&page.import.unwrap_or_default());
        }
        for e in page.errors.iter().take((args.errors - shown) as usize) {
            let column = if e.column.is_empty() { "-" } else { &e.column };
            println!(
                "  row {:>7}  {:<12} {:<18} {}",
                e.row_number, column, e.code, e.message
            );
        }
        shown += page.errors.len() as u32;
        token = page.next_errors_page_token;
        if token.is_empty() || shown >= args.errors {
            return Ok(());
        }
    }
}

pub async fn list(args: ListArgs) -> CliResult {
    let mut client = connect(&args.target.server, &args.target.connection).await?;
    let page = client
        .list_imports(proto::ListImportsRequest {
            account_id: args.target.account.clone(),
            page_size: args.limit,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    for import in &page.imports {
        println!(
            "{:<38} {:<28} {:>9} imported {:>9} failed  {}",
            import.import_id,
            status_name(import.status),
            import.rows_imported,
            import.rows_failed,
            import.filename
        );
    }
    Ok(())
}

pub async fn watch(args: WatchArgs) -> CliResult {
    let mut client = connect(&args.target.server, &args.target.connection).await?;
    let mut updates = client
        .watch_import(proto::WatchImportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner();
    while let Some(update) = updates.next().await {
        let import = update?.import.unwrap_or_default();
        println!(
            "{:<28} {:>12} bytes {:>9} rows {:>9} imported {:>9} failed",
            status_name(import.status),
            import.bytes_received,
            import.rows_processed,
            import.rows_imported,
            import.rows_failed
        );
    }
    Ok(())
}

pub async fn template(args: TemplateArgs) -> CliResult {
    let mut client = connect(&args.server, &args.connection).await?;
    let template = client
        .get_import_template(proto::GetImportTemplateRequest {
            r#type: proto::ImportType::Users as i32,
        })
        .await?
        .into_inner();
    match args.output {
        Some(path) => std::fs::write(path, template.csv)?,
        None => print!("{}", template.csv),
    }
    Ok(())
}

/// Writes the fix-up file to standard output as it arrives.
pub async fn errors(args: ImportArgs) -> CliResult {
    use std::io::Write;
    let mut client = connect(&args.target.server, &args.target.connection).await?;
    let mut chunks = client
        .get_import_error_report(proto::GetImportErrorReportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = chunks.next().await {
        out.write_all(&chunk?.chunk)?;
    }
    out.flush()?;
    Ok(())
}

pub async fn cancel(args: ImportArgs) -> CliResult {
    let mut client = connect(&args.target.server, &args.target.connection).await?;
    let import = client
        .cancel_import(proto::CancelImportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner()
        .import
        .unwrap_or_default();
    print_import(&import);
    Ok(())
}

pub async fn revert(args: ImportArgs) -> CliResult {
    let mut client = connect(&args.target.server, &args.target.connection).await?;
    let reverted = client
        .revert_import(proto::RevertImportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner();
    print_import(&reverted.import.unwrap_or_default());
    println!("users_removed:  {}", reverted.users_removed);
    println!("message:        {}", reverted.message);
    Ok(())
}

/// Prints the users, one per line, following the pages.
pub async fn users(args: UsersArgs) -> CliResult {
    let mut client = connect(&args.target.server, &args.target.connection).await?;
    let mut token = String::new();
    let mut shown = 0u64;
    let limit = args.limit.unwrap_or(u64::MAX);
    while shown < limit {
        let page = client
            .list_users(proto::ListUsersRequest {
                account_id: args.target.account.clone(),
                import_id: args.import_id.clone().unwrap_or_default(),
                page_size: (limit - shown).min(1000) as i32,
                page_token: token,
            })
            .await?
            .into_inner();
        for user in page.users.iter().take((limit - shown) as usize) {
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
        shown += page.users.len() as u64;
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    Ok(())
}

fn status_name(status: i32) -> &'static str {
    proto::ImportStatus::try_from(status)
        .map(|s| s.as_str_name())
        .unwrap_or("IMPORT_STATUS_UNKNOWN_VALUE")
}

fn print_import(import: &proto::Import) {
    println!("import_id:      {}", import.import_id);
    println!("filename:       {}", import.filename);
    println!("status:         {}", status_name(import.status));
    println!("bytes_received: {}", import.bytes_received);
    println!("rows_processed: {}", import.rows_processed);
    println!("rows_imported:  {}", import.rows_imported);
    println!("rows_failed:    {}", import.rows_failed);
    if import.validate_only {
        println!("validate_only:  true (a dry run: no user was written)");
    }
    if import.rows_skipped > 0 || import.rows_updated > 0 {
        println!("rows_skipped:   {}", import.rows_skipped);
        println!("rows_updated:   {}", import.rows_updated);
    }
    if !import.retry_of_import_id.is_empty() {
        println!("retry_of:       {}", import.retry_of_import_id);
    }
    if let Some(time) = &import.revert_time {
        println!("revert_time:    {}", time);
    }
    if !import.error_message.is_empty() {
        println!("error_message:  {}", import.error_message);
    }
}
