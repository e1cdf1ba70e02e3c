//! The client address (SPEC §2): the TCP peer, or — only when the peer is a trusted proxy —
//! the right-most address of the configured forwarding header (`trusted_proxies_header`:
//! `X-Forwarded-For` or `Forwarded`) that is not itself trusted.
//!
//! Right-most, because every hop appends: the entries left of the last trusted hop were
//! written by the client and prove nothing. One header only: when a trusted proxy writes one
//! of them, the other is whatever the client sent, and must not win.
//!
//! Every address is canonical (SPEC §15): on a dual-stack listener (`[::]:8080`) the kernel
//! reports an IPv4 peer as the IPv4-mapped IPv6 address `::ffff:a.b.c.d`, and a proxy may
//! write one into its header; both are the IPv4 address `a.b.c.d` for trusted proxies,
//! `validSources`, rate limits, throttles and logs.

use ipnet::IpNet;
use keyward_config::TrustedProxiesHeader;
use std::net::IpAddr;

/// Who is asking, and through which believed hops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress {
    pub client: IpAddr,
    /// The addresses from the client to keyward's peer, nearest last, peer included: the
    /// `X-Forwarded-For` keyward forwards. Only the believed part of a chain is kept.
    pub chain: Vec<IpAddr>,
}

/// The client address and believed chain of a request from `peer`.
pub fn resolve(
    peer: IpAddr,
    headers: &http::HeaderMap,
    trusted: &[IpNet],
    header: TrustedProxiesHeader,
) -> ClientAddress {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return ClientAddress {
            client: peer,
            chain: vec![peer],
        };
    }
    // Hops, nearest last.
    let hops = match header {
        TrustedProxiesHeader::XForwardedFor => x_forwarded_for_hops(headers),
        TrustedProxiesHeader::Forwarded => forwarded_hops(headers),
    };
    let mut chain = vec![peer];
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                chain.push(*ip);
                if !is_trusted(ip) {
                    break;
                }
            }
            // An unparsable hop ends the chain of trust: stop at the last good address.
            None => break,
        }
    }
    chain.reverse();
    ClientAddress {
        client: chain[0],
        chain,
    }
}

/// A credential's stored `validSources`. They were validated when written; one that no
/// longer parses becomes 0.0.0.0/32, so it narrows rather than widens who may use the key.
pub fn stored_sources(sources: &[String]) -> Vec<IpNet> {
    sources
        .iter()
        .map(|s| {
            keyward_config::parse_cidr(s).unwrap_or_else(|_| IpNet::from(IpAddr::from([0u8; 4])))
        })
        .collect()
}

/// Whether `ip` may use a credential with these sources (none: any address).
pub fn source_allowed(sources: &[IpNet], ip: IpAddr) -> bool {
    sources.is_empty() || sources.iter().any(|net| net.contains(&ip))
}

fn x_forwarded_for_hops(headers: &http::HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| {
            let text = value.to_str().unwrap_or("");
            text.split(',')
                .map(|s| parse_node(s.trim()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn forwarded_hops(headers: &http::HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        let text = value.to_str().unwrap_or("");
        for element in text.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim().trim_matches('"'))
            });
            if let Some(node) = node {
                hops.push(parse_node(node));
            }
        }
    }
    hops
}

/// `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80` or a bare IPv6 address;
/// canonical (`::ffff:1.2.3.4` is `1.2.3.4`).
fn parse_node(node: &str) -> Option<IpAddr> {
    parse_node_as_sent(node).map(|ip| ip.to_canonical())
}

fn parse_node_as_sent(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, _port) = node.rsplit_once(':')?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
    }

    const XFF: TrustedProxiesHeader = TrustedProxiesHeader::XForwardedFor;

    fn client_ip(
        peer: IpAddr,
        headers: &http::HeaderMap,
        trusted: &[IpNet],
        header: TrustedProxiesHeader,
    ) -> IpAddr {
        resolve(peer, headers, trusted, header).client
    }
    const FORWARDED: TrustedProxiesHeader = TrustedProxiesHeader::Forwarded;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        for choice in [XFF, FORWARDED] {
            let resolved = resolve(peer, &h, &trusted(), choice);
            assert_eq!(resolved.client, peer);
            assert_eq!(resolved.chain, vec![peer]);
        }
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.1.1.1")]);
        let resolved = resolve("10.0.0.1".parse().unwrap(), &h, &trusted(), XFF);
        assert_eq!(resolved.client, "1.2.3.4".parse::<IpAddr>().unwrap());
        // What keyward forwards: the believed chain only, then the peer.
        assert_eq!(resolved.chain, ips(&["1.2.3.4", "10.1.1.1", "10.0.0.1"]));
    }

    #[test]
    fn forwarded_header_with_ipv6_and_ports() {
        let h = headers(&[(
            "forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https, for=10.2.2.2:80",
        )]);
        let ip = client_ip("::1".parse().unwrap(), &h, &trusted(), FORWARDED);
        assert_eq!(ip, "2001:db8::7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let h = headers(&[("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "1.2.3.4")]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &trusted(), XFF), ips(&["1.2.3.4"])[0]);
        assert_eq!(
            client_ip(peer, &h, &trusted(), FORWARDED),
            ips(&["6.6.6.6"])[0]
        );
        // A trusted peer that sent no chain is itself the client.
        assert_eq!(client_ip(peer, &headers(&[]), &trusted(), XFF), peer);
    }

    #[test]
    fn stored_sources_narrow_never_widen() {
        let sources = stored_sources(&["10.0.0.0/8".into(), "not a cidr".into()]);
        assert!(source_allowed(&sources, "10.1.2.3".parse().unwrap()));
        assert!(!source_allowed(&sources, "192.0.2.1".parse().unwrap()));
        assert!(
            source_allowed(&[], "192.0.2.1".parse().unwrap()),
            "no sources: any"
        );
    }

    #[test]
    fn mapped_addresses_are_their_ipv4_address() {
        let trusted = vec!["127.0.0.1/32".parse().unwrap()];
        let h = headers(&[(
            "x-forwarded-for",
            "::ffff:203.0.113.5, [::ffff:127.0.0.1]:99",
        )]);
        let resolved = resolve("::ffff:127.0.0.1".parse().unwrap(), &h, &trusted, XFF);
        assert_eq!(resolved.client, ips(&["203.0.113.5"])[0]);
        assert_eq!(
            resolved.chain,
            ips(&["203.0.113.5", "127.0.0.1", "127.0.0.1"])
        );
        // An untrusted mapped peer is its IPv4 address too.
        let alone = resolve("::ffff:192.0.2.7".parse().unwrap(), &h, &[], XFF);
        assert_eq!(alone.client, ips(&["192.0.2.7"])[0]);
        assert_eq!(alone.chain, ips(&["192.0.2.7"]));
    }

    #[test]
    fn garbage_hop_stops_the_walk() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4, garbage")]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &trusted(), XFF), peer);
    }
}
