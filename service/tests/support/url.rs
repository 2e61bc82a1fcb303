//! The address part of the service URLs the tests are given.
#![allow(dead_code)]

use std::net::SocketAddr;

/// The `host:port` of a URL such as `postgres://u:p@127.0.0.1:5432/db` or
/// `http://127.0.0.1:5300`.
pub fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// The socket address of a URL whose host is an IP address, as the test services' are.
pub fn socket_of(url: &str) -> SocketAddr {
    authority(url).parse().unwrap_or_else(|e| panic!("{url} has no IP:port address: {e}"))
}
