//! When a certificate chain may be served: its validity window, read from the certificates.
//!
//! rustls checks nothing of the server's own certificate: an expired one loads and is then
//! refused by every client, each with its own vague error. So the server reads the window
//! itself (x509-parser) and refuses what no client would accept, at start and on reload,
//! and warns while there is still time to renew.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long before the end of its window a certificate is warned about: cert-manager renews
/// at two thirds of a 90-day certificate (30 days before), so a certificate this close to
/// its end means the renewal is not happening.
pub const WARN_BEFORE: Duration = Duration::from_secs(14 * 24 * 3600);

/// The window in which every certificate of a chain is valid: the latest start and the
/// earliest end, with the subject of the certificate that ends first (the one to renew).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Unix seconds before which some certificate of the chain is not valid yet.
    pub not_before: i64,
    /// Unix seconds after which some certificate of the chain is no longer valid.
    pub not_after: i64,
    /// The subject of the certificate that ends first, as its distinguished name reads.
    pub ends_first: String,
    /// The subject of the certificate that starts last.
    pub starts_last: String,
}

impl Window {
    /// The window of `chain` (the server's certificate, then its intermediates). A
    /// certificate that does not parse is an error naming its place in the chain.
    pub fn of(chain: &[CertificateDer<'_>]) -> Result<Self, String> {
        let mut window: Option<Window> = None;
        for (i, der) in chain.iter().enumerate() {
            let (_, cert) = X509Certificate::from_der(der.as_ref())
                .map_err(|e| format!("certificate {} of the chain does not parse: {e}", i + 1))?;
            let validity = cert.validity();
            let (start, end) = (
                validity.not_before.timestamp(),
                validity.not_after.timestamp(),
            );
            let subject = cert.subject().to_string();
            let w = window.get_or_insert_with(|| Window {
                not_before: start,
                not_after: end,
                ends_first: subject.clone(),
                starts_last: subject.clone(),
            });
            if start > w.not_before {
                w.not_before = start;
                w.starts_last = subject.clone();
            }
            if end < w.not_after {
                w.not_after = end;
                w.ends_first = subject;
            }
        }
        window.ok_or_else(|| "no certificate in it".to_owned())
    }

    /// Refuses a chain that no client would accept at `now` (Unix seconds): expired, or not
    /// valid yet (a clock or an issuer ahead of this machine's).
    pub fn usable_at(&self, now: i64) -> Result<(), String> {
        if now > self.not_after {
            return Err(format!(
                "the certificate \"{}\" expired at {}; every client would refuse it. Put a \
                 renewed certificate and its key in the files",
                self.ends_first,
                rfc3339(self.not_after)
            ));
        }
        if now < self.not_before {
            return Err(format!(
                "the certificate \"{}\" is not valid before {}; clients would refuse it until \
                 then. Check this machine's clock, or issue a certificate valid from now",
                self.starts_last,
                rfc3339(self.not_before)
            ));
        }
        Ok(())
    }

    /// The time left at `now` when it is less than [`WARN_BEFORE`].
    pub fn ends_soon(&self, now: i64) -> Option<Duration> {
        let left = self.not_after.saturating_sub(now);
        (left >= 0 && (left as u64) < WARN_BEFORE.as_secs())
            .then(|| Duration::from_secs(left as u64))
    }

    /// Logs the warning for a chain that ends within [`WARN_BEFORE`] of `now`.
    pub fn warn_if_ending(&self, now: i64) {
        if let Some(left) = self.ends_soon(now) {
            tracing::warn!(
                subject = %self.ends_first,
                not_after = %rfc3339(self.not_after),
                days_left = left.as_secs() / 86_400,
                "the TLS certificate expires soon; renew it (the server reads the new files \
                 without a restart)"
            );
        }
    }
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `seconds` as RFC 3339 in UTC, as the rest of the service prints times.
fn rfc3339(seconds: i64) -> String {
    prost_types::Timestamp { seconds, nanos: 0 }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn window(not_before: i64, not_after: i64) -> Window {
        Window {
            not_before,
            not_after,
            ends_first: "CN=end".into(),
            starts_last: "CN=start".into(),
        }
    }

    #[test]
    fn a_chain_is_usable_only_inside_its_window() {
        let w = window(100 * DAY, 200 * DAY);
        assert!(w.usable_at(150 * DAY).is_ok());
        assert!(w.usable_at(100 * DAY).is_ok());
        assert!(w.usable_at(200 * DAY).is_ok());
        let expired = w.usable_at(200 * DAY + 1).unwrap_err();
        assert!(
            expired.contains("\"CN=end\" expired at 1970-07-20T00:00:00Z"),
            "{expired}"
        );
        let early = w.usable_at(100 * DAY - 1).unwrap_err();
        assert!(
            early.contains("\"CN=start\" is not valid before"),
            "{early}"
        );
        assert!(early.contains("clock"), "{early}");
    }

    #[test]
    fn the_warning_starts_fourteen_days_before_the_end() {
        let w = window(0, 100 * DAY);
        assert_eq!(w.ends_soon(86 * DAY), None);
        assert_eq!(
            w.ends_soon(86 * DAY + 1),
            Some(Duration::from_secs((14 * DAY - 1) as u64))
        );
        assert_eq!(w.ends_soon(100 * DAY), Some(Duration::ZERO));
        assert_eq!(w.ends_soon(100 * DAY + 1), None);
    }

    #[test]
    fn the_window_of_a_chain_is_the_narrowest() {
        let ca = rcgen::CertifiedIssuer::self_signed(
            {
                let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2030, 1, 1);
                p.distinguished_name
                    .push(rcgen::DnType::CommonName, "intermediate");
                p
            },
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.not_before = rcgen::date_time_ymd(2021, 1, 1);
        leaf.not_after = rcgen::date_time_ymd(2031, 1, 1);
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "leaf");
        let leaf = leaf
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &ca)
            .unwrap();
        let chain = [leaf.der().clone(), ca.der().clone()];
        let w = Window::of(&chain).unwrap();
        assert_eq!(w.not_before, 1_609_459_200); // 2021-01-01, the leaf's
        assert_eq!(w.not_after, 1_893_456_000); // 2030-01-01, the intermediate's
        assert_eq!(w.ends_first, "CN=intermediate");
        assert_eq!(w.starts_last, "CN=leaf");
        let garbage = [CertificateDer::from(vec![1, 2, 3])];
        assert!(
            Window::of(&garbage)
                .unwrap_err()
                .starts_with("certificate 1 of the chain does not parse")
        );
    }
}
