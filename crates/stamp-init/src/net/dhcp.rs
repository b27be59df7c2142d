//! DHCPv4 messages (RFC 2131, options RFC 2132): the few a client sends and reads.
//!
//! A message is the fixed 236-byte BOOTP header, the magic cookie and TLV options. Parsing
//! checks every length against the packet; nothing here panics or allocates more than the
//! packet's size.

use std::net::Ipv4Addr;

/// The fixed BOOTP header's size.
const HEADER: usize = 236;
/// The magic cookie that starts the options (99.130.83.99).
const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Shortest BOOTP message servers accept (RFC 1542 §2.1); shorter ones are padded.
const MIN_LEN: usize = 300;

/// Server port.
pub const SERVER_PORT: u16 = 67;
/// Client port.
pub const CLIENT_PORT: u16 = 68;

const OPT_PAD: u8 = 0;
const OPT_SUBNET: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_DOMAIN: u8 = 15;
const OPT_MTU: u8 = 26;
const OPT_BROADCAST: u8 = 28;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE: u8 = 51;
const OPT_OVERLOAD: u8 = 52;
const OPT_MSG_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMS: u8 = 55;
const OPT_MAX_SIZE: u8 = 57;
const OPT_CLIENT_ID: u8 = 61;
const OPT_END: u8 = 255;

/// The DHCP message types used here (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// Client looks for servers.
    Discover = 1,
    /// Server offers an address.
    Offer = 2,
    /// Client asks for the offered address.
    Request = 3,
    /// Server refuses.
    Nak = 6,
    /// Server confirms.
    Ack = 5,
}

impl MsgType {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => MsgType::Discover,
            2 => MsgType::Offer,
            3 => MsgType::Request,
            5 => MsgType::Ack,
            6 => MsgType::Nak,
            _ => return None,
        })
    }
}

/// A message the client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// DISCOVER or REQUEST.
    pub kind: MsgType,
    /// Transaction id.
    pub xid: u32,
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// For REQUEST: the offered address and the server that offered it.
    pub requested: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The host name to announce (option 12), if any.
    pub hostname: Option<String>,
}

impl Request {
    /// The message's bytes (at least 300, as some servers want).
    pub fn encode(&self) -> Vec<u8> {
        let mut p = vec![0u8; HEADER];
        p[0] = 1; // BOOTREQUEST
        p[1] = 1; // Ethernet
        p[2] = 6; // hardware address length
        p[4..8].copy_from_slice(&self.xid.to_be_bytes());
        // Broadcast flag: we cannot receive unicast before the address is configured.
        p[10..12].copy_from_slice(&0x8000u16.to_be_bytes());
        p[28..34].copy_from_slice(&self.mac);
        p.extend_from_slice(&COOKIE);
        p.extend_from_slice(&[OPT_MSG_TYPE, 1, self.kind as u8]);
        let mut id = vec![1u8];
        id.extend_from_slice(&self.mac);
        put_opt(&mut p, OPT_CLIENT_ID, &id);
        put_opt(&mut p, OPT_MAX_SIZE, &1500u16.to_be_bytes());
        put_opt(
            &mut p,
            OPT_PARAMS,
            &[
                OPT_SUBNET,
                OPT_ROUTER,
                OPT_DNS,
                OPT_DOMAIN,
                OPT_MTU,
                OPT_BROADCAST,
                OPT_LEASE,
            ],
        );
        if let Some((ip, server)) = self.requested {
            put_opt(&mut p, OPT_REQUESTED_IP, &ip.octets());
            put_opt(&mut p, OPT_SERVER_ID, &server.octets());
        }
        if let Some(h) = &self.hostname {
            let h = &h.as_bytes()[..h.len().min(63)];
            if !h.is_empty() {
                put_opt(&mut p, OPT_HOSTNAME, h);
            }
        }
        p.push(OPT_END);
        if p.len() < MIN_LEN {
            p.resize(MIN_LEN, 0);
        }
        p
    }
}

fn put_opt(p: &mut Vec<u8>, code: u8, data: &[u8]) {
    p.push(code);
    p.push(data.len() as u8);
    p.extend_from_slice(data);
}

/// A server's reply, with the options a client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// OFFER, ACK or NAK (None if option 53 is missing or unknown).
    pub kind: Option<MsgType>,
    /// Transaction id.
    pub xid: u32,
    /// The client hardware address echoed back.
    pub chaddr: [u8; 6],
    /// The address offered (`yiaddr`).
    pub yiaddr: Ipv4Addr,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 1.
    pub subnet_mask: Option<Ipv4Addr>,
    /// Option 3 (the first router).
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain: Option<String>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Option 51, seconds.
    pub lease_secs: Option<u32>,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            kind: None,
            xid: 0,
            chaddr: [0; 6],
            yiaddr: Ipv4Addr::UNSPECIFIED,
            server_id: None,
            subnet_mask: None,
            router: None,
            dns: Vec::new(),
            domain: None,
            mtu: None,
            lease_secs: None,
        }
    }
}

/// Why a packet is not a usable reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPacket(pub String);

impl std::fmt::Display for BadPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(detail: String) -> BadPacket {
    BadPacket(detail)
}

fn ip4(b: &[u8]) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

impl Reply {
    /// Parses a server's message (`op` 2, Ethernet). Errors name the field and the offset.
    pub fn decode(p: &[u8]) -> Result<Reply, BadPacket> {
        if p.len() < HEADER + COOKIE.len() {
            return Err(bad(format!(
                "{} bytes, shorter than a DHCP message ({})",
                p.len(),
                HEADER + COOKIE.len()
            )));
        }
        if p[0] != 2 {
            return Err(bad(format!(
                "op at offset 0x0 is {}, not BOOTREPLY (2)",
                p[0]
            )));
        }
        if p[1] != 1 || p[2] != 6 {
            return Err(bad(format!(
                "hardware type/length at offset 0x1 are {}/{}, not Ethernet",
                p[1], p[2]
            )));
        }
        if p[HEADER..HEADER + 4] != COOKIE {
            return Err(bad(format!("no DHCP magic cookie at offset {HEADER:#x}")));
        }
        let mut r = Reply {
            xid: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            yiaddr: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
            ..Reply::default()
        };
        r.chaddr.copy_from_slice(&p[28..34]);
        let mut i = HEADER + COOKIE.len();
        while i < p.len() {
            let code = p[i];
            if code == OPT_END {
                break;
            }
            if code == OPT_PAD {
                i += 1;
                continue;
            }
            let len = *p
                .get(i + 1)
                .ok_or_else(|| bad(format!("option {code} at offset {i:#x} has no length")))?
                as usize;
            let data = p.get(i + 2..i + 2 + len).ok_or_else(|| {
                bad(format!(
                    "option {code} at offset {i:#x}: {len} bytes past the end of a {}-byte packet",
                    p.len()
                ))
            })?;
            match code {
                OPT_MSG_TYPE => r.kind = data.first().and_then(|b| MsgType::from_u8(*b)),
                OPT_SERVER_ID => r.server_id = ip4(data),
                OPT_SUBNET => r.subnet_mask = ip4(data),
                OPT_ROUTER => r.router = ip4(data),
                OPT_DNS => r.dns = data.chunks_exact(4).filter_map(ip4).collect(),
                OPT_DOMAIN => {
                    let d = String::from_utf8_lossy(data);
                    let d = d.trim_end_matches('\0').trim();
                    r.domain = (!d.is_empty()).then(|| d.to_string());
                }
                OPT_MTU => {
                    r.mtu = data
                        .get(..2)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]))
                        .filter(|m| *m >= 68);
                }
                OPT_LEASE => {
                    r.lease_secs = data
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                }
                // Options overloading into sname/file: not needed for the ones we read.
                OPT_OVERLOAD => {}
                _ => {}
            }
            i += 2 + len;
        }
        Ok(r)
    }

    /// The netmask: option 1, or the classful default for the address.
    pub fn netmask(&self) -> Ipv4Addr {
        self.subnet_mask
            .unwrap_or_else(|| match self.yiaddr.octets()[0] {
                0..=127 => Ipv4Addr::new(255, 0, 0, 0),
                128..=191 => Ipv4Addr::new(255, 255, 0, 0),
                _ => Ipv4Addr::new(255, 255, 255, 0),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reply_bytes(kind: u8, opts: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER];
        p[0] = 2;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        p.extend_from_slice(&COOKIE);
        p.extend_from_slice(&[OPT_MSG_TYPE, 1, kind]);
        p.extend_from_slice(opts);
        p.push(OPT_END);
        p
    }

    #[test]
    fn discover_has_the_fields_a_server_reads() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let p = Request {
            kind: MsgType::Discover,
            xid: 0xdead_beef,
            mac,
            requested: None,
            hostname: Some("app".into()),
        }
        .encode();
        assert!(p.len() >= MIN_LEN);
        assert_eq!(&p[..3], &[1, 1, 6]);
        assert_eq!(&p[4..8], &0xdead_beefu32.to_be_bytes());
        assert_eq!(&p[10..12], &[0x80, 0]);
        assert_eq!(&p[28..34], &mac);
        assert_eq!(&p[HEADER..HEADER + 4], &COOKIE);
        assert_eq!(&p[HEADER + 4..HEADER + 7], &[OPT_MSG_TYPE, 1, 1]);
        let opts = &p[HEADER + 4..];
        assert!(
            opts.windows(5)
                .any(|w| w == [OPT_HOSTNAME, 3, b'a', b'p', b'p'])
        );
        assert!(!opts.windows(2).any(|w| w == [OPT_REQUESTED_IP, 4]));
    }

    #[test]
    fn request_carries_the_offered_address_and_server() {
        let p = Request {
            kind: MsgType::Request,
            xid: 7,
            mac: [1, 2, 3, 4, 5, 6],
            requested: Some((Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2))),
            hostname: None,
        }
        .encode();
        let opts = &p[HEADER + 4..];
        assert_eq!(&opts[..3], &[OPT_MSG_TYPE, 1, 3]);
        assert!(
            opts.windows(6)
                .any(|w| w == [OPT_REQUESTED_IP, 4, 10, 0, 2, 15])
        );
        assert!(
            opts.windows(6)
                .any(|w| w == [OPT_SERVER_ID, 4, 10, 0, 2, 2])
        );
    }

    #[test]
    fn offer_is_decoded_with_its_options() {
        let opts = [
            OPT_SERVER_ID,
            4,
            10,
            0,
            2,
            2, //
            OPT_SUBNET,
            4,
            255,
            255,
            255,
            0,       //
            OPT_PAD, //
            OPT_ROUTER,
            8,
            10,
            0,
            2,
            2,
            10,
            0,
            2,
            1, //
            OPT_DNS,
            8,
            10,
            0,
            2,
            3,
            1,
            1,
            1,
            1, //
            OPT_DOMAIN,
            4,
            b'e',
            b'x',
            b'a',
            0, //
            OPT_MTU,
            2,
            0x05,
            0xb4, //
            OPT_LEASE,
            4,
            0,
            1,
            0x51,
            0x80,
        ];
        let r = Reply::decode(&reply_bytes(2, &opts)).unwrap();
        assert_eq!(r.kind, Some(MsgType::Offer));
        assert_eq!(r.xid, 0x1234_5678);
        assert_eq!(r.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.chaddr, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(r.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            r.dns,
            vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert_eq!(r.domain.as_deref(), Some("exa"));
        assert_eq!(r.mtu, Some(1460));
        assert_eq!(r.lease_secs, Some(86400));
    }

    #[test]
    fn ack_and_nak_are_recognised() {
        assert_eq!(
            Reply::decode(&reply_bytes(5, &[])).unwrap().kind,
            Some(MsgType::Ack)
        );
        assert_eq!(
            Reply::decode(&reply_bytes(6, &[])).unwrap().kind,
            Some(MsgType::Nak)
        );
    }

    #[test]
    fn classful_netmask_without_option_1() {
        let r = Reply::decode(&reply_bytes(5, &[])).unwrap();
        assert_eq!(r.netmask(), Ipv4Addr::new(255, 0, 0, 0));
    }

    #[test]
    fn truncated_option_is_an_error_naming_the_offset() {
        let mut p = reply_bytes(2, &[]);
        p.pop(); // END
        p.extend_from_slice(&[OPT_DNS, 8, 1, 2]);
        let e = Reply::decode(&p).unwrap_err();
        assert!(e.0.contains("option 6 at offset 0xf3"), "{e}");
    }

    #[test]
    fn requests_are_not_replies() {
        let p = Request {
            kind: MsgType::Discover,
            xid: 1,
            mac: [0; 6],
            requested: None,
            hostname: None,
        }
        .encode();
        assert!(Reply::decode(&p).unwrap_err().0.contains("BOOTREPLY"));
        assert!(Reply::decode(&p[..100]).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = Reply::decode(&b);
        }

        #[test]
        fn random_options_never_panic(opts in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut p = reply_bytes(2, &[]);
            p.truncate(HEADER + 4);
            p.extend_from_slice(&opts);
            let _ = Reply::decode(&p);
        }

        #[test]
        fn encoded_requests_round_trip_their_header(xid in any::<u32>(), mac in any::<[u8; 6]>(), host in "[a-z]{0,80}") {
            let mut p = Request { kind: MsgType::Discover, xid, mac, requested: None, hostname: Some(host) }.encode();
            p[0] = 2; // pretend it came back
            let r = Reply::decode(&p).unwrap();
            prop_assert_eq!(r.xid, xid);
            prop_assert_eq!(r.chaddr, mac);
            prop_assert_eq!(r.kind, Some(MsgType::Discover));
        }
    }
}
