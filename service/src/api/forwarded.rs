//! Who is asking and which address they used, behind proxies or not.
//!
//! Headers a proxy adds (`X-Forwarded-For`, `-Host`, `-Proto`, or RFC 7239 `Forwarded`) are
//! read only when the settings say a proxy sets them, and then only the entries the trusted
//! proxies added: each proxy appends to what it received, so the entries at the right are the
//! proxies' and anything further left is whatever the client wrote. Without trust, the client
//! address is the connection's and the origin comes from `Host`: a header any client can send
//! never decides where a token realm points or whose failed logins are counted.

use std::net::IpAddr;

use actix_web::HttpRequest;
use actix_web::http::header;

use crate::config::TrustForwarded;

/// How to read a request's origin and client address.
#[derive(Clone, Copy, Debug)]
pub struct Proxies {
    pub trust: TrustForwarded,
    /// Proxies in front of Berth that append to the forwarded headers (at least one when
    /// `trust` is on): the client's entry is this many from the right.
    pub hops: usize,
}

/// What the request says about its sender, as far as it may be believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The client's address, for counting failed logins and for the log.
    pub address: String,
    /// `scheme://host` the client used, for absolute URLs when no external URL is set.
    pub origin: String,
}

impl Proxies {
    pub fn none() -> Proxies {
        Proxies { trust: TrustForwarded::None, hops: 1 }
    }

    pub fn origin(&self, req: &HttpRequest) -> Origin {
        let peer = req.peer_addr().map(|a| a.ip().to_string());
        let own_host = host_of(req);
        let (address, scheme, host) = match self.trust {
            TrustForwarded::None => (None, None, None),
            TrustForwarded::XForwarded => (
                self.pick(list(req, "x-forwarded-for").into_iter().filter_map(address).collect()),
                self.pick(list(req, "x-forwarded-proto")),
                self.pick(list(req, "x-forwarded-host")),
            ),
            TrustForwarded::Forwarded => {
                let elements = forwarded_elements(req);
                let field = |name: &str| {
                    elements.iter().map(|e| e.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).collect()
                };
                let for_: Vec<Option<String>> = field("for");
                (
                    self.pick_opt(for_.into_iter().map(|v| v.and_then(address)).collect()),
                    self.pick_opt(field("proto")),
                    self.pick_opt(field("host")),
                )
            }
        };
        let scheme = scheme.filter(|s| s == "http" || s == "https").unwrap_or_else(|| "http".to_owned());
        let host = host.filter(|h| is_host(h)).unwrap_or(own_host);
        Origin {
            address: address.or(peer).unwrap_or_else(|| "unknown".to_owned()),
            origin: format!("{scheme}://{host}"),
        }
    }

    /// The entry the outermost trusted proxy added: `hops` from the right, or the leftmost
    /// when fewer proxies added one.
    fn pick(&self, entries: Vec<String>) -> Option<String> {
        let index = entries.len().saturating_sub(self.hops.max(1));
        entries.into_iter().nth(index)
    }

    fn pick_opt(&self, entries: Vec<Option<String>>) -> Option<String> {
        self.pick(entries.into_iter().map(Option::unwrap_or_default).collect()).filter(|v| !v.is_empty())
    }
}

/// The comma-separated entries of every `name` header, in order.
fn list(req: &HttpRequest, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().to_owned())
        .collect()
}

/// RFC 7239 `Forwarded` elements, each a list of lower-cased names and unquoted values.
fn forwarded_elements(req: &HttpRequest) -> Vec<Vec<(String, String)>> {
    list(req, "forwarded")
        .iter()
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_owned()))
                .collect()
        })
        .collect()
}

/// An IP address from a forwarded entry (`1.2.3.4`, `1.2.3.4:5678`, `[::1]:5678`, `::1`);
/// `None` for anything else (`unknown`, an obfuscated name, garbage).
fn address(entry: String) -> Option<String> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let host = match entry.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(ip, _)| ip)?,
        None => entry.rsplit_once(':').map(|(ip, _)| ip)?,
    };
    host.parse::<IpAddr>().ok().map(|ip| ip.to_string())
}

/// Whether a host (with an optional port) is safe to put in a URL and a header: letters,
/// digits, `.`, `-`, `:` and the brackets of an IPv6 address.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The `Host` the client sent, or the address it connected to.
fn host_of(req: &HttpRequest) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .filter(|h| is_host(h))
        .unwrap_or_else(|| req.app_config().host().to_owned())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn origin(trust: TrustForwarded, hops: usize, headers: &[(&str, &str)]) -> Origin {
        let mut req = TestRequest::default().peer_addr("10.0.0.1:4000".parse().unwrap());
        req = req.insert_header((header::HOST, "registry.internal:5000"));
        for (name, value) in headers {
            req = req.append_header((*name, *value));
        }
        Proxies { trust, hops }.origin(&req.to_http_request())
    }

    #[test]
    fn without_trust_the_headers_a_client_sends_are_ignored() {
        let forged = [
            ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
            ("x-forwarded-host", "evil2.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "10.9.9.9"),
        ];
        let o = origin(TrustForwarded::None, 1, &forged);
        assert_eq!(o, Origin { address: "10.0.0.1".into(), origin: "http://registry.internal:5000".into() });
    }

    #[test]
    fn behind_one_proxy_the_entry_it_added_counts() {
        // The client wrote 10.9.9.9; the proxy appended the address it saw.
        let o = origin(
            TrustForwarded::XForwarded,
            1,
            &[
                ("x-forwarded-for", "10.9.9.9, 203.0.113.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "registry.example.com"),
            ],
        );
        assert_eq!(o, Origin { address: "203.0.113.7".into(), origin: "https://registry.example.com".into() });
        // Two proxies: the outer one's entry is second from the right.
        let o = origin(TrustForwarded::XForwarded, 2, &[("x-forwarded-for", "10.9.9.9, 203.0.113.7, 10.0.0.9")]);
        assert_eq!(o.address, "203.0.113.7");
        // Fewer entries than proxies: the leftmost, which a proxy wrote.
        let o = origin(TrustForwarded::XForwarded, 3, &[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(o.address, "203.0.113.7");
        // Separate headers count as one list.
        let o = origin(
            TrustForwarded::XForwarded,
            1,
            &[("x-forwarded-for", "10.9.9.9"), ("x-forwarded-for", "198.51.100.2")],
        );
        assert_eq!(o.address, "198.51.100.2");
    }

    #[test]
    fn rfc_7239_forwarded_is_read_the_same_way() {
        let o = origin(
            TrustForwarded::Forwarded,
            1,
            &[(
                "forwarded",
                "for=10.9.9.9;host=evil.example, for=\"[2001:db8::7]:4711\";proto=https;host=registry.example.com",
            )],
        );
        assert_eq!(o, Origin { address: "2001:db8::7".into(), origin: "https://registry.example.com".into() });
        // X-Forwarded-* is not what this proxy sets: ignored.
        let o = origin(TrustForwarded::Forwarded, 1, &[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(o.address, "10.0.0.1");
    }

    #[test]
    fn hosts_and_schemes_that_could_break_a_header_are_refused() {
        let o = origin(
            TrustForwarded::XForwarded,
            1,
            &[
                ("x-forwarded-host", "evil\"realm"),
                ("x-forwarded-proto", "javascript"),
                ("x-forwarded-for", "nonsense"),
            ],
        );
        assert_eq!(o, Origin { address: "10.0.0.1".into(), origin: "http://registry.internal:5000".into() });
    }
}
