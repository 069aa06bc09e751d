//! `--console-listen`: where the web console is served, or `off`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Where the console listens when `--console-listen` is not given: the loopback interface. A
/// port taken there (another server on the machine) leaves the console off, with a warning,
/// rather than stopping the server; an address given on purpose that cannot be bound stops it.
pub const DEFAULT_CONSOLE_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));

/// Where the console listens: an address, or nowhere.
///
/// On by default on the loopback interface, so that a person who runs the server on their
/// machine opens it in a browser at once, while nobody else can reach it; a server that must
/// serve it to others says so with an address (`0.0.0.0:8080`), and one that must not serve it
/// at all (the Helm chart's default) says `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleListen {
    /// No console.
    Off,
    /// The console on this address; port 0 picks a free one, as the tests do.
    At(SocketAddr),
}

/// clap's parser for `--console-listen`: `off` (also `none`, `false`), or an address with its
/// port, such as `127.0.0.1:8080` or `[::1]:8080`.
pub fn console_listen(text: &str) -> Result<ConsoleListen, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "off" | "none" | "false" => Ok(ConsoleListen::Off),
        _ => text.trim().parse().map(ConsoleListen::At).map_err(|_| {
            format!(
                "'{text}' is not an address with a port, such as 127.0.0.1:8080 or \
                 0.0.0.0:8080; write off to serve no console"
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_or_off() {
        assert_eq!(
            console_listen("127.0.0.1:8080"),
            Ok(ConsoleListen::At("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(console_listen("OFF"), Ok(ConsoleListen::Off));
        let error = console_listen("localhost").unwrap_err();
        assert!(error.contains("127.0.0.1:8080"), "{error}");
    }
}
